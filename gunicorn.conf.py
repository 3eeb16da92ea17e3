"""Gunicorn settings for `make run` and production: the ASGI app under uvicorn workers.

gunicorn manages the processes (start, restart a dead one, graceful stop); each worker is one
event loop that answers any number of turns at once while they wait on the model (up to
CHAT_MAX_TURNS_IN_FLIGHT). Override with GUNICORN_CMD_ARGS. See docs/serving.md.
"""

import os

wsgi_app = "chatproject.asgi:application"
worker_class = "chatproject.workers.ChatWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = 120
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
accesslog = "-"
# gunicorn's control socket defaults to one path (~/.gunicorn/gunicorn.ctl) for every instance of
# the OS user, so a second instance would take over the first's. Off unless a path is given.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def worker_exit(server, worker):
    # Turns' traces wait in the database for `deliver_traces`; this only flushes anything MLflow
    # itself still queues (nothing on the chat path), so a stop never loses a trace.
    from chat import tracing

    tracing.flush()
