"""The gunicorn worker that serves the app over ASGI (see gunicorn.conf.py and docs/serving.md).

uvicorn's worker for gunicorn, with what this app needs on top: uvloop and httptools, no ASGI
lifespan (Django has none), and a stop that lets turns in flight finish within gunicorn's
`graceful_timeout` before the master would kill the worker.
"""

import os
import sys

from uvicorn_worker import UvicornWorker


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
        super().init_process()
