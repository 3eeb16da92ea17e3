"""Gunicorn settings for `make run` and production (override with GUNICORN_CMD_ARGS)."""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 120
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'


def worker_exit(server, worker):
    # Turns' traces wait in the database for `deliver_traces`; this only flushes anything MLflow
    # itself still queues (nothing on the chat path), so a stop never loses a trace.
    from chat import tracing

    tracing.flush()
