"""The gunicorn worker that serves the app over ASGI (see gunicorn.conf.py and docs/serving.md).

uvicorn's worker for gunicorn, with what this app needs on top: uvloop and httptools, no ASGI
lifespan (Django has none), a stop that lets turns in flight finish within gunicorn's
`graceful_timeout` before the master would kill the worker, and new connections accepted in
batches (`BatchAcceptor`).
"""

import asyncio
import ctypes
import errno
import gc
import logging
import os
import socket
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

logger = logging.getLogger(__name__)


class ChatWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "lifespan": "off"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # On SIGTERM uvicorn stops accepting connections at once, then waits for requests in
        # flight this long (a second less than gunicorn, which kills the worker after its own).
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 1)

    def init_process(self):
        # A turn's ORM unit runs in a thread and gives up the GIL at every SQL statement; with
        # the event loop busy streaming other turns, taking it back waits up to the switch
        # interval (Python's 5 ms) each time, so a 5-statement write lasted ~10-25 ms and held
        # SQLite's write lock that long. 1 ms: 128 streamed users 0.81 -> 0.93 of ideal, time
        # to first token p50 +770 -> +150 ms (bench/concurrency.py, docs/serving.md).
        sys.setswitchinterval(float(os.environ.get("GIL_SWITCH_INTERVAL_S", "0.001")))
        _limit_malloc_arenas(_arenas_wanted())
        super().init_process()

    async def _serve(self) -> None:
        # As UvicornWorker._serve, with the server that accepts connections in batches.
        self.config.app = self.wsgi
        server = BatchAcceptServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def load_wsgi(self):
        super().load_wsgi()
        from chatproject.middleware import skip_request_started_thread_hop

        skip_request_started_thread_hop()
        _freeze_loaded()
        _tune_gc(int(os.environ.get("WEB_GC_THRESHOLD", "0")))


class BatchAcceptor:
    """Accepts the connections waiting on a listening socket, up to BATCH each time it is
    readable, and hands each to the event loop as uvicorn's own server would.

    libuv (under uvloop) accepts one connection per event loop pass since libuv 1.45
    (libuv/libuv#3696), which is right for a quiet server and wrong for a busy one: with the
    loop busy streaming answers a pass takes tens of milliseconds, and at 1,000 users arriving
    at once the listen queue held up to 423 connections, each waiting seconds before its request
    was even read, so a refusal that takes a millisecond arrived 4-22 s late
    (bench/concurrency.py; docs/serving.md). Python's own event loop accepts in batches the same
    way (`BaseSelectorEventLoop._accept_connection`); the transports stay uvloop's.
    """

    BATCH = 64  # per pass and process: gunicorn's workers share the socket and each takes some

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol_factory):
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._connecting: set[asyncio.Task] = set()
        self._serving = True
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited: take the next
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of descriptors or memory: the connections wait in the listen queue (or
                # go to the other workers) until some are closed, instead of a busy loop.
                logger.error("accepting connections paused for 1 s: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(1.0, self._resume)
                return
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except OSError:
            conn.close()  # reset by the client before its transport was made

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    # What uvicorn's `Server.shutdown` asks of the servers it made.
    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())

    def is_serving(self) -> bool:
        return self._serving

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)


class BatchAcceptServer(Server):
    """uvicorn's server, on gunicorn's listening sockets through `BatchAcceptor`."""

    async def startup(self, sockets=None) -> None:
        if sockets is None:  # not under gunicorn: uvicorn's own
            return await super().startup(sockets)
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop=None):
            return config.http_protocol_class(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        self.servers = [BatchAcceptor(loop, sock, create_protocol) for sock in sockets]
        self.started = True


def _freeze_loaded() -> None:
    """Leave what start-up loaded (modules, classes, settings: ~130,000 objects, never garbage)
    out of the garbage collector's full walks, which otherwise stop the event loop for each.

    Measured in a worker at 1,000 streamed users on PostgreSQL (bench/concurrency.py, gc
    callbacks): a full collection every ~5 s, each stopping the loop 150-340 ms, and the loop's
    worst lateness in those seconds 250-340 ms. Frozen, a full collection walks only what the
    turns in flight made. Costs no memory: nothing frozen would ever be collected.
    """
    gc.collect()
    gc.freeze()


def _tune_gc(threshold: int) -> None:
    """Fewer garbage collections in a worker that holds hundreds of turns at once (0: Python's).

    py-spy at 512 JSON users on PostgreSQL, the event loop saturated: 38 % of its samples in
    the cyclic garbage collector (Python collects the youngest generation every 700 net
    allocations). With `threshold` the youngest generation is collected every `threshold`
    allocations. Measured (bench/concurrency.py, 512 JSON users, alternating runs): 50,000 gave
    SQLite 107 -> 114 turns/s and PostgreSQL 88 -> 105, but the runs without it vary as much
    (105-116), and the garbage kept between collections costs memory: a worker +35 MB at 512
    users, +6 MB after 1,000 turns at 8 at a time (bench/footprint.py). Off by default: for a
    machine short of CPU rather than memory, measured against its own model.
    """
    if threshold <= 0:
        return
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _arenas_wanted() -> int:
    return int(os.environ.get("WEB_MALLOC_ARENA_MAX", "2"))


def _limit_malloc_arenas(arenas: int) -> None:
    """At most `arenas` glibc malloc arenas in this worker (0: glibc's default, 8 per core).

    Every thread that allocates (the unit and request threads) may get an arena of its own, each
    keeping what it freed apart: ~0.6 MB a thread after 1,000 turns. With two (the default), a
    worker holds 88-89 MB after 1,000 turns instead of 91-92 MB (bench/footprint.py). When each
    request had a thread of its own this cost turns (128 streamed users on SQLite: 0.86-0.90 of
    ideal instead of 0.90-0.95), so it was off; with the shared unit threads, alternating runs
    (bench/concurrency.py --env WEB_MALLOC_ARENA_MAX=2 / 0, 2026-12-07) gave 0.99-1.00 of ideal
    and time to first token +10 ms both ways at 128 streamed users, and 130.0 / 130.3 against
    136.2 / 127.4 turns/s at 512 JSON users (no difference beyond the runs' spread).
    Set here, in the worker before its threads start, so it holds however gunicorn is started
    (MALLOC_ARENA_MAX in the environment must be set before the master starts). Nothing on
    other C libraries.
    """
    if arenas <= 0:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass
