"""Time to erase a person with 100 turns and feedback: the database part, then MLflow, verified.

    .venv/bin/python bench/erasure.py [--turns 100] [--target both|store|server]

A user makes N turns through the chat API (in-process, local responder) and rates every
answer (a rating, a comment and a corrected answer); staff label a fifth of their turns; they
also rate, as staff, ten turns of another user. Everything is delivered to MLflow with the
workers' own code. Then `erase_user`'s two steps run and are timed: `user_erase` (database)
and `erasure_finish` (MLflow: delete traces with their files and assessments, remove their
assessments on the other user's traces, search again). Targets: the local SQLite store and
an `mlflow server` as `make run` starts it.
"""

import argparse
import time
from pathlib import Path

from _setup import boot_django, token_client


def scenario(turns: int, suffix: str):
    from chat import delivery
    from chat.models import Turn
    from feedback import selectors
    from feedback import services as feedback_services

    person, client = token_client(f"bench-erased-{suffix}")
    other, other_client = token_client(f"bench-other-{suffix}")
    staff, _ = token_client(f"bench-staff-{suffix}")
    session_id = None
    for i in range(turns):
        body = {"message": f"question {i}", **({"session_id": session_id} if session_id else {})}
        reply = client.post("/api/chat/", body, format="json").json()
        session_id = reply["session_id"] if i % 10 else None  # ten conversations
        rating = {"rating": 1 + i % 5, "comment": f"comment {i}", "expected_response": "fix"}
        client.put(f"/api/messages/{reply['message_id']}/feedback/", rating, format="json")
    for i in range(10):
        other_client.post("/api/chat/", {"message": f"other {i}"}, format="json")
    while delivery.trace_deliver_due():
        pass
    for turn in Turn.objects.filter(user=person).order_by("id")[: turns // 5]:
        feedback_services.feedback_submit(user=staff, turn=turn, is_correct=False)
    for turn in Turn.objects.filter(user=other):
        feedback_services.feedback_submit(user=person, turn=turn, is_correct=True, comment="ok")
    while selectors.feedback_pending().exists():
        feedback_services.feedback_deliver_due(limit=500, threads=4)
    return person, staff


def erase(person, staff) -> None:
    from privacy import services
    from privacy.models import Erasure

    started = time.perf_counter()
    erasure = services.user_erase(user=person, via=Erasure.Via.COMMAND, requested_by=staff)
    db_s = time.perf_counter() - started
    started = time.perf_counter()
    erasure = services.erasure_finish(erasure=erasure)
    mlflow_s = time.perf_counter() - started
    rows = erasure.rows_removed
    print(
        f"    rows removed: {sum(rows.values())} ({', '.join(f'{n} {k}' for k, n in rows.items())})"
    )
    print(
        f"    MLflow: {erasure.traces_removed} traces, {erasure.artifacts_removed} artifact "
        f"folders, {erasure.assessments_removed} assessments on others' traces removed"
    )
    print(
        f"    seconds: database {db_s:.2f}, MLflow {mlflow_s:.2f} (with the check), "
        f"total {db_s + mlflow_s:.2f}"
    )
    print(
        f"    verification: {erasure.state}; search metadata.`mlflow.trace.user` = "
        f"'{erasure.subject_user_id}' finds {erasure.remaining_traces} traces, "
        f"{erasure.remaining_assessments} of their assessments left"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--target", choices=["both", "store", "server"], default="both")
    args = parser.parse_args()

    tmp = boot_django()
    from django.conf import settings

    from chat import tracing
    from tests.mlflow_server import MlflowServer

    if args.target in ("both", "store"):
        tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name="bench")
        print(f"local SQLite store, {args.turns} turns:", flush=True)
        erase(*scenario(args.turns, "store"))
    if args.target in ("both", "server"):
        server = MlflowServer(Path(tmp) / "mlflow-server")
        server.start()
        try:
            tracing.configure(tracking_uri=server.url, experiment_name="bench-server")
            print(f"mlflow server (as make run starts it), {args.turns} turns:", flush=True)
            erase(*scenario(args.turns, "server"))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
