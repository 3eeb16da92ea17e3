"""Gunicorn settings for `make run` and production (override with GUNICORN_CMD_ARGS)."""

import os

from chatproject.gunicorn_errors import install as json_errors

json_errors()  # gunicorn's own 400/431 pages in the API's JSON error shape

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 120
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
# gunicorn's control socket defaults to one path (~/.gunicorn/gunicorn.ctl) for every instance of
# the OS user, so a second instance would take over the first's. Off unless a path is given.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def worker_exit(server, worker):
    # Turns' traces wait in the database for `deliver_traces`; this only flushes anything MLflow
    # itself still queues (nothing on the chat path), so a stop never loses a trace.
    from chat import tracing

    tracing.flush()
