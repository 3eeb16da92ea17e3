"""ORM work from async code: short sync units, each giving its database connection back.

Django's ORM is synchronous. An async view runs it through `sync_to_async`. A unit is one such
call around a function that reads or writes and returns; it never holds a connection while the
model thinks (docs/serving.md).

Where a unit runs:
- under the ASGI server, by default (settings.DB_UNITS_IN_LOOP): in the event loop's own thread,
  as a plain call. The loop waits for the unit (a few milliseconds of CPU and SQL) and nothing
  else waits: no thread to wake, no GIL to hand back and forth at each statement, no queue for a
  free thread. Measured at 512 JSON users against the unit threads below: 93-98 turns/s against
  55-80 on SQLite, 79-86 against 66-75 on PostgreSQL (docs/serving.md). What it costs: while a
  unit waits for the database (another process's write on SQLite, a round trip on PostgreSQL)
  every turn of the process waits with it;
- with DB_UNITS_IN_LOOP false: on a small pool of long-lived threads (DB_UNIT_THREADS > 0)
  shared by every request of the process. The threads and, on SQLite, their connections are
  made once and reused, instead of one thread per request (Django's thread-sensitive mode) that
  opens a connection per unit. The thread that went idle last takes the next unit
  (`UnitThreads`), so a quiet process keeps using one thread and one warm connection;
- either way a unit gives its connection back when it ends: to psycopg's pool on PostgreSQL; on
  SQLite the thread keeps it open for its next unit (idle, in autocommit);
- the rest of a request's sync work (its signals' receivers, a sync view, a session save) runs,
  as Django wants, in one thread for the whole request; under the ASGI server that thread is one
  of WEB_REQUEST_THREADS long-lived ones (`request_context`), the least busy when the request
  arrives, instead of a thread made and joined (by another thread) per request;
- when called from sync code (runserver's WSGI, the test client: an outer sync thread exists,
  and the test's transaction lives there), or with DB_UNITS_IN_LOOP false and DB_UNIT_THREADS
  = 0: in Django's thread-sensitive mode, the caller's thread, closing what it opened when it
  returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import AsyncToSync, ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


class UnitThreads(Executor):
    """Up to `max_workers` long-lived threads; a unit goes to the thread that went idle last.

    concurrent.futures' pool wakes whichever idle thread its queue's lock picks, so under light
    load a process's units rotate over all its threads. On SQLite each thread keeps its own
    connection, and a connection that did not make the last write starts its next transaction
    with its page cache emptied (WAL: the database changed under it): rotating over eight
    connections, nearly every unit re-read its pages. Last in, first out keeps the fewest
    threads and connections busy, the rest untouched; under full load every thread works and
    units queue first in, first out, as before.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str, initializer=None):
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._initializer = initializer
        self._lock = threading.Lock()
        self._idle: list[_UnitThread] = []  # a stack: the last to go idle is woken first
        self._waiting: collections.deque = collections.deque()  # units no thread was free for
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        work = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new units after shutdown")
            if self._idle:
                self._idle.pop().wake(work)
            elif len(self._threads) < self._max_workers:
                unit_thread = _UnitThread(self, work)
                thread = threading.Thread(
                    target=unit_thread.run,
                    name=f"{self._prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._waiting.append(work)
        return future

    def _next(self, unit_thread: _UnitThread):
        """The work a thread takes next: a waiting unit, or None when it is to stop."""
        with self._lock:
            if self._waiting:
                return self._waiting.popleft()
            if self._shutdown:
                return None
            unit_thread.sleep()
            self._idle.append(unit_thread)
        return unit_thread.wait()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._waiting:
                    self._waiting.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            for unit_thread in idle:
                unit_thread.wake(None)
        if wait:
            for thread in list(self._threads):
                thread.join()


class _UnitThread:
    """One of `UnitThreads`' threads: runs units until told to stop."""

    def __init__(self, pool: UnitThreads, work):
        self._pool = pool
        self._work = work
        self._gate = threading.Lock()  # held while the thread sleeps; released to wake it

    def sleep(self) -> None:
        self._gate.acquire()

    def wake(self, work) -> None:
        self._work = work
        self._gate.release()

    def wait(self):
        with self._gate:  # blocks until `wake` releases it
            work, self._work = self._work, None
        return work

    def run(self) -> None:
        if self._pool._initializer is not None:
            self._pool._initializer()
        work, self._work = self._work, None
        while work is not None:
            future, fn, args, kwargs = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 (handed to the awaiting coroutine)
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del work, future, fn, args, kwargs  # nothing of a unit outlives it here
            work = self._pool._next(self)


_pool: UnitThreads | None = None
_pool_guard = threading.Lock()
_unit_thread = threading.local()  # .pooled: this thread is one of the pool's


def release_connections() -> None:
    """Give back this thread's connections, except one a caller's transaction still holds.

    (A test's transaction wraps the whole test: its connection must stay.) In a pool thread an
    SQLite connection in a good state stays open for the thread's next unit.
    """
    pooled = _keeps_connection()
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        if pooled and _reusable(connection):
            continue
        connection.close()


def _keeps_connection() -> bool:
    return getattr(_unit_thread, "pooled", False)


def _reusable(connection) -> bool:
    return (
        connection.vendor == "sqlite"
        and connection.connection is not None
        and not connection.errors_occurred
        and connection.get_autocommit()
    )


def _mark_pooled() -> None:
    _unit_thread.pooled = True


def unit_pool() -> UnitThreads | None:
    """The process's unit threads, made on first use (after a fork: gunicorn's workers)."""
    global _pool
    threads = settings.DB_UNIT_THREADS
    if threads <= 0:
        return None
    if _pool is None or _pool._max_workers != threads:
        with _pool_guard:
            if _pool is None or _pool._max_workers != threads:
                if _pool is not None:  # the setting changed (a test): new units, new threads
                    _pool.shutdown(wait=False)
                _pool = UnitThreads(threads, thread_name_prefix="db-unit", initializer=_mark_pooled)
    return _pool


def run_unit(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func`, awaitable: in the event loop's thread, on the unit threads, or, called from sync
    code, in Django's thread-sensitive mode (see the module's docstring)."""
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return sync_to_async(func)  # a sync caller above the loop (a test): its thread
    if settings.DB_UNITS_IN_LOOP:
        return _in_loop(func)
    pool = unit_pool()
    if pool is None:
        return sync_to_async(func)
    return sync_to_async(func, thread_sensitive=False, executor=pool)


def _in_loop(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    async def in_loop(*args: P.args, **kwargs: P.kwargs) -> R:
        with _orm_in_loop():
            return func(*args, **kwargs)

    return in_loop


@contextlib.contextmanager
def _orm_in_loop():
    """Let one unit use the ORM in the event loop's thread.

    Django refuses ORM calls from a thread whose event loop is running (`async_unsafe`, a guard
    against blocking the loop by mistake: it asks asyncio for the running loop). A unit blocks
    the loop on purpose, for the milliseconds it lasts, so for its duration asyncio reports no
    running loop (`asyncio._set_running_loop`, the hook event loops themselves use); the guard
    is back for any other code as soon as the unit returns. The thread keeps its SQLite
    connection between units, as a unit thread does.
    """
    loop = asyncio._get_running_loop()
    kept = getattr(_unit_thread, "pooled", False)
    asyncio._set_running_loop(None)
    _unit_thread.pooled = True
    try:
        yield
    finally:
        _unit_thread.pooled = kept
        asyncio._set_running_loop(loop)


def db_unit(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` as an awaitable unit of ORM work whose connections are given back when it ends."""

    def unit(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    @functools.wraps(func)
    async def awaitable(*args: P.args, **kwargs: P.kwargs) -> R:
        return await run_unit(unit)(*args, **kwargs)

    return awaitable


class _RequestThread(ThreadPoolExecutor):
    """One long-lived thread for requests' thread-sensitive work, counting what it has queued."""

    def __init__(self, number: int):
        super().__init__(1, thread_name_prefix=f"request-{number}")
        self.queued = 0
        self._count = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._count:
            self.queued += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, future) -> None:
        with self._count:
            self.queued -= 1


_request_threads: list[_RequestThread] = []


class RequestExecutor(Executor):
    """One request's way to its long-lived thread, noting whether the request ever used it."""

    def __init__(self, thread: _RequestThread):
        self._thread = thread
        self.used = False

    def submit(self, fn, /, *args, **kwargs):
        self.used = True
        return self._thread.submit(fn, *args, **kwargs)


_request_executor: contextvars.ContextVar[RequestExecutor | None] = contextvars.ContextVar(
    "request_executor", default=None
)


def request_thread_used() -> bool:
    """Whether this request has run anything on its thread (True under Django's own mode)."""
    executor = _request_executor.get()
    return executor is None or executor.used


def request_context() -> ThreadSensitiveContext:
    """The context an ASGI request runs in: Django's own (a thread of the request's own), or,
    under the server with WEB_REQUEST_THREADS > 0, one on the least busy long-lived thread."""
    wanted = settings.WEB_REQUEST_THREADS
    _request_executor.set(None)
    if wanted <= 0 or getattr(AsyncToSync.executors, "current", None) is not None:
        return ThreadSensitiveContext()  # a sync caller (a test) keeps its thread
    if len(_request_threads) != wanted:
        with _pool_guard:
            while len(_request_threads) < wanted:
                _request_threads.append(_RequestThread(len(_request_threads)))
            del _request_threads[wanted:]  # (the setting shrank: a test) left to finish alone
    executor = RequestExecutor(min(_request_threads, key=lambda t: t.queued))
    _request_executor.set(executor)
    return ThreadSensitiveContext(executor=executor)
