"""The gunicorn worker's process settings (chatproject/workers.py)."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatproject.workers import _arenas_wanted, _freeze_loaded, _tune_gc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gc_state():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_what_a_worker_loaded_at_start_is_left_out_of_full_collections(gc_state):
    _freeze_loaded()

    assert gc.get_freeze_count() > 10_000  # Django, DRF and the app, out of the collector's way


def test_a_gc_threshold_collects_the_young_less_often(gc_state):
    older = gc.get_threshold()[1:]
    _tune_gc(50_000)

    assert gc.get_threshold() == (50_000, *older)


def test_no_gc_threshold_leaves_python_s_thresholds_alone(gc_state):
    before = gc.get_threshold()
    _tune_gc(0)

    assert gc.get_threshold() == before


def test_the_asgi_app_loads_the_model_client_before_its_first_request(tmp_path):
    # `import openai` is ~0.5 s of CPU: on the event loop under the first turns it stopped each
    # worker ~1 s at 1,000 users. A fresh interpreter, as a worker: load the app, take nothing.
    script = (
        "import sys, chatproject.asgi\n"
        "print('openai' in sys.modules, type(chatproject.asgi.get_chat_model()).__name__)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "warm-up-test",
        "DJANGO_DOT_ENV": "",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",  # nobody listening: nothing is called
        "LOG_LEVEL": "ERROR",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "OpenAICompatibleChat"]


ARENAS = """
import sys, threading
from pathlib import Path
sys.path.insert(0, {repo!r})
from chatproject.workers import _limit_malloc_arenas

_limit_malloc_arenas({arenas})
barrier = threading.Barrier(8)
held = []

def allocate():
    barrier.wait()  # all eight allocate at once: each would get an arena of its own
    held.append([bytearray(4096) for _ in range(200)])  # > 512 B: glibc's malloc, not Python's

threads = [threading.Thread(target=allocate) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
# A thread arena is a 64 MiB reservation (glibc's HEAP_MAX_SIZE), mapped as one or two areas.
sizes = {{}}
for line in Path("/proc/self/maps").read_text().splitlines():
    fields = line.split()
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if len(fields) == 5:  # anonymous
        base = start & ~(64 * 2**20 - 1)
        sizes[base] = sizes.get(base, 0) + end - start
print(sum(1 for base, size in sizes.items() if size == 64 * 2**20))
"""


def thread_arenas(arenas: int) -> int:
    code = ARENAS.format(repo=str(REPO), arenas=arenas)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_a_worker_s_threads_share_two_malloc_arenas_by_default(monkeypatch):
    monkeypatch.delenv("WEB_MALLOC_ARENA_MAX", raising=False)
    assert _arenas_wanted() == 2
    # Two: the main arena and one more, however many threads allocate at once.
    assert thread_arenas(2) <= 1
    assert thread_arenas(0) >= 3  # glibc's own default: an arena per thread, up to 8 per core


def test_connections_waiting_to_be_accepted_are_taken_in_one_pass_up_to_the_batch():
    import asyncio
    import socket

    import uvloop

    from chatproject.workers import BatchAcceptor

    class Recorder(asyncio.Protocol):
        made: list = []

        def connection_made(self, transport):
            self.made.append(transport)

    async def scenario():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0), backlog=200)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(70)]
        acceptor = BatchAcceptor(loop, listener, Recorder)
        try:
            acceptor._accept()  # one pass, as when the socket is readable once
            first_pass = len(acceptor._connecting)
            await acceptor.wait_closed()
            await asyncio.sleep(0.05)  # the rest: the socket is still readable
            acceptor.close()
            clients.append(socket.create_connection(listener.getsockname()))
            await asyncio.sleep(0.05)  # closed: a new connection waits in the listen queue
            return first_pass, len(Recorder.made), acceptor.is_serving()
        finally:
            for transport in Recorder.made:
                transport.close()
            for client in clients:
                client.close()
            listener.close()

    first_pass, made, serving = uvloop.run(scenario())

    # libuv alone accepts one connection per pass of the event loop (libuv/libuv#3696).
    assert first_pass == BatchAcceptor.BATCH
    assert made == 70  # all of them, with uvloop's transports
    assert not serving
