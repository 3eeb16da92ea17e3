"""SQLite with one writer at a time per process, queued on a lock instead of SQLite's polling.

SQLite lets one connection write at a time. A connection that finds the database locked waits in
SQLite's busy handler, which sleeps and retries (1, 2, 5 ... 100 ms): with hundreds of turns in
flight, newcomers keep taking the lock between an older waiter's sleeps, and a turn can wait
seconds for a write of a millisecond (bench/concurrency.py, 128 streamed users: time to first
token p50 +0.9 s, threads parked in `BEGIN IMMEDIATE`). Here a write transaction first takes a
lock shared by the process's connections to the same file; waiters wake as soon as it is free.
Other processes (the other workers, the delivery workers) still meet at SQLite's own lock, a few
contenders instead of hundreds.
"""

from __future__ import annotations

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _write_lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def _start_transaction_under_autocommit(self):
        lock = _write_lock(str(self.settings_dict["NAME"]))
        timeout = float(self.settings_dict["OPTIONS"].get("timeout", 5))
        if not lock.acquire(timeout=timeout):
            raise OperationalError(
                f"database is locked: no write transaction could start within {timeout:g} s"
            )
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            _write_lock(str(self.settings_dict["NAME"])).release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
