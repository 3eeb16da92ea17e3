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
        sys.setswitchinterval(float(os.environ.get("GIL_SWITCH_INTERVAL_S", "0.005")))
        super().init_process()
