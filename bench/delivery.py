"""Traces written to MLflow per second by the trace deliverer, with nothing else running.

    .venv/bin/python bench/delivery.py [--traces 400] [--batch 200]
    bin/with-postgres .venv/bin/python bench/delivery.py --postgres   # + a PostgreSQL store

Real turns are recorded through the chat API (in-process, local responder), then their stored
traces are written with the deliverer's own code (`chat.delivery.trace_deliver_due`) to:
an `mlflow server` on SQLite with 1 and with 2 workers (as `make run` starts it, and with
MLFLOW_SERVER_WORKERS=2), and the same server's database written directly (the deliverer given
the backend URI, the server up beside it: whole batches of trace infos in one transaction,
chat/tracing/sqlstore.py) and, with --postgres, a PostgreSQL tracking store written directly (a
database made on the cluster bin/with-postgres started, whose URL it passes in DATABASE_URL).
Each target gets the same number of fresh traces;
every one is checked to be in MLflow afterwards. Prints traces/s and the ratio to the first.
"""

import argparse
import time
from pathlib import Path

from _setup import boot_django, token_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=400, help="traces per target")
    parser.add_argument("--batch", type=int, default=200, help="TRACE_DELIVERY_BATCH")
    parser.add_argument(
        "--postgres", action="store_true", help="also a PostgreSQL store (under bin/with-postgres)"
    )
    args = parser.parse_args()
    postgres = _postgres_store() if args.postgres else None

    tmp = boot_django()
    from django.conf import settings

    from chat import delivery, tracing
    from chat.models import TraceExport
    from tests.mlflow_server import MlflowServer

    settings.TRACE_DELIVERY_BATCH = args.batch
    _, client = token_client("bench-delivery")
    results: list[tuple[str, float]] = []
    for workers in (1, 2):
        server = MlflowServer(Path(tmp) / f"mlflow-{workers}", workers=workers)
        server.start()
        try:
            targets = [(f"mlflow server, {workers} worker(s)", server.url)]
            if workers == 1:
                direct = f"sqlite:///{server.root}/mlflow.db"
                targets.append(("its database directly", direct))
                if postgres:
                    targets.append(("a PostgreSQL store directly", postgres))
            for label, uri in targets:
                tracing.configure(tracking_uri=uri, experiment_name=f"bench-{workers}")
                TraceExport.objects.all().delete()
                for i in range(args.traces):
                    client.post("/api/chat/", {"message": f"question {i}"}, format="json")
                started = time.perf_counter()
                while delivery.trace_deliver_due():
                    pass
                seconds = time.perf_counter() - started
                exported = TraceExport.objects.filter(state=TraceExport.State.EXPORTED)
                assert exported.count() == args.traces, "not every trace was written"
                in_mlflow = tracing.experiment_trace_ids()
                assert set(exported.values_list("trace_id", flat=True)) <= set(in_mlflow)
                rate = args.traces / seconds
                results.append((label, rate))
                print(f"  {label}: {args.traces} traces in {seconds:.1f} s", flush=True)
        finally:
            server.stop()

    base = results[0][1]
    print(f"\ntraces written per second, batches of {args.batch}:")
    for label, rate in results:
        print(f"  {label:34} {rate:6.1f}/s  {rate / base:4.2f}x")


def _postgres_store() -> str:
    """A fresh database on the cluster bin/with-postgres started, as an MLflow store URI."""
    import os

    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("--postgres: run under bin/with-postgres (it sets DATABASE_URL)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS mlflow_bench")
        conn.execute("CREATE DATABASE mlflow_bench")
    base = url.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+psycopg://{base}/mlflow_bench"


if __name__ == "__main__":
    main()
