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
# How long an idle keep-alive connection is kept (uvicorn's timeout_keep_alive). Above the idle
# timeout of whatever sits in front (load balancers keep theirs ~60 s), so the proxy, not the app,
# closes an idle connection and never sends a request on one the app is closing. gunicorn's 2 s
# default also closed every connection whose user paused a little (a 503's Retry-After, a person
# reading): each came back as a new connection, and uvloop accepts one connection per event loop
# pass, so under load they waited in the listen queue: at 1,000 streamed users up to 423
# connections and 22 s for a 503 (bench/concurrency.py, docs/serving.md).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
# gunicorn's control socket defaults to one path (~/.gunicorn/gunicorn.ctl) for every instance of
# the OS user, so a second instance would take over the first's. Off unless a path is given.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def worker_exit(server, worker):
    # Turns' traces wait in the database for `deliver_traces`; this only flushes anything MLflow
    # itself still queues (nothing on the chat path), so a stop never loses a trace.
    from chat import tracing

    tracing.flush()
