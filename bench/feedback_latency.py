"""Feedback request latency with MLflow up vs down, and time from feedback to assessment.

    .venv/bin/python bench/feedback_latency.py [--feedbacks 200]

    .venv/bin/python bench/feedback_latency.py --rate 0    # everything at once

Starts a real `mlflow server` (SQLite) and the real delivery worker processes
(`manage.py deliver_traces --loop` and `deliver_feedback --loop`), as `make run` does. Each
feedback is sent right after its turn, while the turn's trace is typically not in MLflow yet.
Then the server is stopped, more feedback is sent, and the server is started again.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _setup import ROOT, percentile

sys.path.insert(0, str(ROOT))
from tests.mlflow_server import MlflowServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feedbacks", type=int, default=200)
    parser.add_argument("--down", type=int, default=50, help="feedbacks sent while MLflow is down")
    parser.add_argument(
        "--rate", type=float, default=5.0, help="turns+feedbacks per second (0: one burst)"
    )
    args = parser.parse_args()

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-fb-"))
    server = MlflowServer(tmp / "mlflow-server")
    print("starting mlflow server ...", flush=True)
    server.start()
    os.environ["BENCH_MLFLOW_TRACKING_URI"] = server.url
    from _setup import boot_django, token_client

    boot_django()
    from feedback.models import Feedback

    user, client = token_client("bench-fb")
    # Feedback is delivered once its turn's trace is in MLflow: both workers, as `make run`.
    trace_worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "deliver_traces", "--loop"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "deliver_feedback", "--loop"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        print(f"worker: {worker.stdout.readline().strip()}", flush=True)  # up and polling
        up_ms, messages = [], []
        pace = 1 / args.rate if args.rate else 0.0
        began = time.monotonic()
        for i in range(args.feedbacks):
            time.sleep(max(0.0, began + i * pace - time.monotonic()))
            body = client.post("/api/chat/", {"message": f"question {i}"}, format="json").json()
            messages.append(body["message_id"])
            started = time.perf_counter()
            response = client.put(
                f"/api/messages/{body['message_id']}/feedback/",
                {"is_correct": i % 3 != 0, "comment": f"bench {i}"},
                format="json",
            )
            up_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 201, response.content
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{args.feedbacks} feedbacks sent (MLflow up)", flush=True)
        wait_delivered(Feedback, args.feedbacks, timeout=180)
        lag = [
            (f.delivered_at - f.updated_at).total_seconds() * 1000 for f in Feedback.objects.all()
        ]

        server.stop()
        print("mlflow server stopped", flush=True)
        down_ms = []
        for i, message_id in enumerate(messages[: args.down]):
            started = time.perf_counter()
            response = client.put(
                f"/api/messages/{message_id}/feedback/", {"rating": 1 + i % 5}, format="json"
            )
            down_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content
        time.sleep(2)
        pending = Feedback.objects.filter(delivery_state="pending").count()
        print(f"mlflow server restarted; {pending} feedbacks pending", flush=True)
        server.start()
        restarted = time.monotonic()
        wait_delivered(Feedback, args.feedbacks, timeout=180)
        recovered_s = time.monotonic() - restarted
    finally:
        for process in (worker, trace_worker):
            process.terminate()
            process.wait(timeout=30)
        server.stop()

    print()
    print(f"{'feedback request (ms)':30}{'p50':>9}{'p90':>9}")
    print(f"{'MLflow up':30}{percentile(up_ms, 50):9.2f}{percentile(up_ms, 90):9.2f}")
    print(f"{'MLflow down':30}{percentile(down_ms, 50):9.2f}{percentile(down_ms, 90):9.2f}")
    print(f"down/up p50 ratio: {percentile(down_ms, 50) / percentile(up_ms, 50):.2f}x")
    print()
    rate = f"{args.rate:g}/s" if args.rate else "one burst"
    print(
        f"feedback -> assessment in MLflow, {len(lag)} feedbacks right after their turn ({rate}):"
    )
    p50, p99 = percentile(lag, 50), percentile(lag, 99)
    print(f"  p50 {p50:.0f} ms   p99 {p99:.0f} ms   max {max(lag):.0f} ms")
    print(f"after the outage: {args.down} changed feedbacks in MLflow {recovered_s:.1f}s after")
    print("the server answered again (the worker probes every FEEDBACK_PROBE_INTERVAL_S)")


def wait_delivered(Feedback, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Feedback.objects.filter(delivery_state="delivered").count() < expected:
        if time.monotonic() > deadline:
            raise SystemExit("feedback not delivered in time")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
