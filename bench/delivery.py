"""Traces written to MLflow per second by the trace deliverer, with nothing else running.

    .venv/bin/python bench/delivery.py [--traces 400] [--batch 200]

Real turns are recorded through the chat API (in-process, local responder), then their stored
traces are written with the deliverer's own code (`chat.delivery.trace_deliver_due`) to:
an `mlflow server` on SQLite with 1 and with 2 workers (as `make run` starts it, and with
MLFLOW_SERVER_WORKERS=2), and the same server's database written directly (the deliverer given
the backend URI, the server up beside it). Each target gets the same number of fresh traces;
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
