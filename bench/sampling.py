"""MLflow trace rows written per 1,000 turns at a sampling ratio, and feedback -> late trace time.

    .venv/bin/python bench/sampling.py [--turns 1000] [--ratios 0.1 1.0] [--feedbacks 50]

Part 1 (in one process, the local SQLite tracking store): for each ratio, `--turns` turns through
the API, then the trace deliverer's passes until nothing is due; prints the trace rows MLflow
holds (its own search, not our counts) beside the database's accounting, which must add up:
answered = traced + sampled out.

Part 2 (the real workers, `deliver_traces --loop` and `deliver_feedback --loop`, as `make run`
starts them, on the same SQLite tracking store): `--feedbacks` turns at ratio 0 (every trace
sampled out), then feedback on each at `--rate` per second; the time from just before the
feedback request to its row being marked delivered, which happens only after the trace was
written (the deliverer marks it exported after both writes) and the assessment logged.
"""

import argparse
import subprocess
import sys
import time
import uuid

from _setup import ROOT, boot_django, percentile, token_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--feedbacks", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="feedbacks per second (part 2)")
    args = parser.parse_args()

    boot_django()
    from django.conf import settings

    from chat import selectors, tracing
    from tests.conftest import deliver_traces

    _, client = token_client("bench-sampling")
    print(
        f"{'ratio':>6}{'turns':>7}{'MLflow traces':>15}{'per 1,000':>11}"
        f"{'traced':>8}{'sampled out':>13}{'adds up':>9}"
    )
    for ratio in args.ratios:
        tracing.configure(
            tracking_uri=settings.MLFLOW_TRACKING_URI,
            experiment_name=f"bench-ratio-{ratio}-{uuid.uuid4().hex[:6]}",
        )
        settings.TRACE_SAMPLE_RATIO = ratio
        before = selectors.trace_accounting()
        for i in range(args.turns):
            response = client.post("/api/chat/", {"message": f"question {i}"}, format="json")
            assert response.status_code == 200, response.content
        deliver_traces(timeout=600)
        in_mlflow = len(tracing.experiment_trace_ids())
        after = selectors.trace_accounting()
        answered = after["answered"] - before["answered"]
        traced = after["traced"] - before["traced"]
        sampled_out = after["sampled_out"] - before["sampled_out"]
        adds_up = answered == traced + sampled_out == args.turns and traced == in_mlflow
        print(
            f"{ratio:6g}{answered:7d}{in_mlflow:15d}{in_mlflow * 1000 / args.turns:11.0f}"
            f"{traced:8d}{sampled_out:13d}{'yes' if adds_up else 'NO':>9}",
            flush=True,
        )
    if args.feedbacks:
        feedback_to_late_trace(settings, client, args.feedbacks, args.rate)


def feedback_to_late_trace(settings, client, count: int, rate: float) -> None:
    from django.utils import timezone

    from chat import tracing
    from chat.models import TraceExport
    from feedback.models import Feedback

    tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name="bench")
    settings.TRACE_SAMPLE_RATIO = 0.0
    bodies = [
        client.post("/api/chat/", {"message": f"late {i}"}, format="json").json()
        for i in range(count)
    ]
    ids = [b["trace_id"] for b in bodies]
    assert TraceExport.objects.filter(trace_id__in=ids, state="sampled_out").count() == count
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), command, "--loop"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for command in ("deliver_traces", "deliver_feedback")
    ]
    try:
        for worker in workers:
            worker.stdout.readline()  # up and polling
        sent = {}
        began = time.monotonic()
        for i, body in enumerate(bodies):
            time.sleep(max(0.0, began + i / rate - time.monotonic()))
            sent[body["trace_id"]] = timezone.now()
            response = client.put(
                f"/api/messages/{body['message_id']}/feedback/",
                {"is_correct": i % 2 == 0},
                format="json",
            )
            assert response.status_code == 201, response.content
        deadline = time.monotonic() + 120
        delivered = Feedback.objects.filter(turn__trace_id__in=ids, delivery_state="delivered")
        while delivered.count() < count:
            if time.monotonic() > deadline:
                raise SystemExit("feedback not delivered in time")
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    lag = [
        (f.delivered_at - sent[f.turn.trace_id]).total_seconds()
        for f in delivered.select_related("turn")
    ]
    late = TraceExport.objects.filter(trace_id__in=ids, written_late="feedback").count()
    found = set(tracing.experiment_trace_ids())
    print()
    print(
        f"feedback on a sampled-out turn -> its trace and assessment in MLflow "
        f"({count} feedbacks at {rate:g}/s; workers polling every "
        f"{settings.TRACE_POLL_INTERVAL_S:g}/{settings.FEEDBACK_POLL_INTERVAL_S:g} s):"
    )
    print(
        f"  p50 {percentile(lag, 50):.2f} s   p99 {percentile(lag, 99):.2f} s   "
        f"max {max(lag):.2f} s   (target <= 5 s)"
    )
    print(f"  traces written late: {late}/{count}, in MLflow: {len(found & set(ids))}/{count}")


if __name__ == "__main__":
    main()
