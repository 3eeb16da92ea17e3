"""SQLite whose writers queue on a lock instead of polling SQLite's busy handler.

SQLite lets one connection write at a time. A connection that finds the database locked waits in
SQLite's busy handler, which sleeps and retries (1, 2, 5 ... 100 ms): with hundreds of turns in
flight, newcomers keep taking the lock between an older waiter's sleeps, and a turn can wait
seconds for a write of a millisecond (bench/concurrency.py, 128 streamed users: time to first
token p50 +0.9 s; 512 users: ~300 threads parked in `BEGIN IMMEDIATE`, 25 turns/s).

Here a write transaction first takes the database's write lock: a lock shared by the process's
threads, then an advisory `flock` on `<database>.writelock` shared by every process using this
backend (the web workers, the delivery workers, manage.py commands). A waiting thread sleeps on
the thread lock and wakes as soon as it is free; one thread per process at most polls the file
lock, every 0.5-4 ms. SQLite's own lock and busy timeout stay underneath, for anything else.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

from django.db import OperationalError
from django.db.backends.sqlite3 import base


class WriteLock:
    """One database file's write lock: threads of a process, then processes."""

    def __init__(self, path: str | None):
        self.path = path  # None: an in-memory database, which one process alone can write
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        if self.path is None:
            return True
        try:
            fd = self._file()
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._threads.release()
                        return False
                    time.sleep(delay)
                    delay = min(delay * 2, 0.004)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        if self.path is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def _file(self) -> int:
        # One descriptor per process (a forked child must not share its parent's: the lock
        # belongs to the open file, so parent and child would hold it together).
        if self._pid != os.getpid():
            self._fd = os.open(f"{self.path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


_locks: dict[str, WriteLock] = {}
_locks_guard = threading.Lock()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def _write_lock(self) -> WriteLock:
        name = str(self.settings_dict["NAME"])
        with _locks_guard:
            lock = _locks.get(name)
            if lock is None:
                lock = _locks[name] = WriteLock(None if self.is_in_memory_db() else name)
            return lock

    def _start_transaction_under_autocommit(self):
        timeout = float(self.settings_dict["OPTIONS"].get("timeout", 5))
        if not self._write_lock().acquire(timeout):
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
            self._write_lock().release()

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
