"""A retention pass over many old traces: its time, the rows it removed, and its check.

    .venv/bin/python bench/retention.py [--old 100000] [--new 500] [--batch 500]

On a throwaway SQLite database and tracking store (the embedded defaults):
1. `--new` turns through the API, their traces delivered by the real deliverer: what must
   survive the pass. One more turn is the template of the old ones (its trace has three spans
   and a feedback assessment).
2. `--old` copies of that turn, 200 days old, built directly: the Django rows (conversations of
   ten turns, two messages each, trace rows with the template's payload) by bulk insert, and the
   MLflow rows the deliverer writes (`chat.tracing.sqlstore.start_traces`: trace info, tags,
   metadata) with the template's spans and assessment copied under each new trace id.
3. `manage.py apply_retention` with TRACE_RETENTION_DAYS=90 and CONVERSATION_RETENTION_DAYS=90:
   wall time, rows removed by kind, what its check found, and then independently: MLflow's own
   search for anything older, and every new trace still there.
"""

import argparse
import io
import sys
import time
import uuid
from datetime import timedelta

from _setup import boot_django, token_client

DAY_MS = 24 * 3600 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    boot_django()
    from django.conf import settings

    from chat import tracing
    from tests.conftest import deliver_traces

    tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name="bench-retention")
    user, client = token_client("bench-retention")
    started = time.perf_counter()
    new_ids = []
    for i in range(args.new + 1):
        response = client.post("/api/chat/", {"message": f"question {i}"}, format="json")
        assert response.status_code == 200, response.content
        new_ids.append(response.json()["trace_id"])
    template = new_ids.pop()
    body = client.post("/api/chat/", {"message": "rated"}, format="json").json()
    new_ids.append(body["trace_id"])
    put = client.put(f"/api/messages/{body['message_id']}/feedback/", {"rating": 2}, format="json")
    assert put.status_code == 201, put.content
    deliver_traces(timeout=600)
    _deliver_feedback()
    took = time.perf_counter() - started
    print(f"{args.new + 2} new turns through the API, traced ({took:.1f} s)")

    started = time.perf_counter()
    _build_old(template=template, rated=body["trace_id"], user=user, n=args.old)
    print(f"{args.old} old turns and traces built directly ({time.perf_counter() - started:.1f} s)")

    from django.core.management import call_command

    settings.TRACE_RETENTION_DAYS = settings.CONVERSATION_RETENTION_DAYS = 90
    out = io.StringIO()
    started = time.perf_counter()
    call_command("apply_retention", "--batch", str(args.batch), stdout=out)
    elapsed = time.perf_counter() - started
    lines = out.getvalue().splitlines()
    print(f"apply_retention --batch {args.batch}: {elapsed:.1f} s, {len(lines)} lines of progress")
    for line in lines[:2] + ["  ..."] + lines[-3:]:
        print(f"  | {line}")

    from privacy.models import RetentionPass

    done = RetentionPass.objects.latest("started_at")
    print(f"removed: {done.removed}")
    print(f"its check: {done.remaining} ({done.state})")
    cutoff_ms = int(done.trace_cutoff.timestamp() * 1000)
    older = tracing.old_trace_ids(before_ms=cutoff_ms, limit=10)
    left = set(tracing.experiment_trace_ids())
    print(
        f"independently: MLflow search for older traces finds {len(older)}; "
        f"{len(set(new_ids) & left)}/{len(new_ids)} new traces still there; "
        f"{len(left)} traces in the experiment; "
        f"{done.removed.get('traces', 0) / elapsed:,.0f} traces removed/s"
    )
    if older or len(set(new_ids) & left) != len(new_ids):
        sys.exit("retention removed the wrong traces")


def _deliver_feedback() -> None:
    from feedback import services

    for _ in range(100):
        if not sum(services.feedback_deliver_due(limit=100, threads=1).values()):
            return
        time.sleep(0.1)


def _build_old(*, template: str, rated: str, user, n: int) -> None:
    """`n` copies of the template turn and its trace, 200 days old, in chunks of 5,000."""
    from django.db import transaction
    from django.utils import timezone
    from mlflow.entities import TraceInfo
    from mlflow.store.tracking.dbmodels.models import SqlAssessments, SqlSpan
    from mlflow.tracing.client import TracingClient
    from sqlalchemy import insert, select

    from chat.models import ChatSession, Message, TraceExport, Turn
    from chat.tracing import sqlstore
    from chat.tracing.setup import tracking_uri

    store = TracingClient(tracking_uri()).store
    info = store.get_trace_info(template)
    with store.ManagedSessionMaker() as session:
        spans = [
            {c.name: getattr(row, c.name) for c in SqlSpan.__table__.columns if not c.computed}
            for row in session.scalars(select(SqlSpan).where(SqlSpan.trace_id == template))
        ]
        assessments = [
            {c.name: getattr(row, c.name) for c in SqlAssessments.__table__.columns}
            for row in session.scalars(
                select(SqlAssessments).where(SqlAssessments.trace_id == rated)
            )
        ]
    turn = Turn.objects.get(trace_id=template)
    payload = TraceExport.objects.get(trace_id=template).payload
    old = timezone.now() - timedelta(days=200)
    old_ms = int(old.timestamp() * 1000)
    chunk = 5000
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        trace_ids = [f"tr-{uuid.uuid4().hex}" for _ in range(size)]
        with transaction.atomic():
            sessions = ChatSession.objects.bulk_create(
                [ChatSession(owner=user, title="old") for _ in range(0, size, 10)]
            )
            turns = Turn.objects.bulk_create(
                [
                    Turn(
                        session=sessions[i // 10],
                        user=user,
                        client_request_id=trace_id,
                        trace_id=trace_id,
                        endpoint=turn.endpoint,
                        environment=turn.environment,
                        app_version=turn.app_version,
                        status=turn.status,
                        model=turn.model,
                        latency_ms=turn.latency_ms,
                        attempts=1,
                        started_at=old,
                        completed_at=old,
                    )
                    for i, trace_id in enumerate(trace_ids)
                ]
            )
            Message.objects.bulk_create(
                Message(session=t.session, turn=t, role=role, content=f"old {role}")
                for t in turns
                for role in (Message.Role.USER, Message.Role.ASSISTANT)
            )
            TraceExport.objects.bulk_create(
                TraceExport(
                    turn=t,
                    trace_id=t.trace_id,
                    payload=payload,
                    state=TraceExport.State.EXPORTED,
                    exported_at=old,
                )
                for t in turns
            )
            # auto_now fields: backdated after the insert, as the app would have left them.
            ChatSession.objects.filter(pk__in=[s.pk for s in sessions]).update(
                created_at=old, updated_at=old
            )
            Turn.objects.filter(pk__in=[t.pk for t in turns]).update(created_at=old)
            Message.objects.filter(turn__in=turns).update(created_at=old)
            TraceExport.objects.filter(turn__in=turns).update(created_at=old)
        infos = []
        for k, trace_id in enumerate(trace_ids):
            copy = TraceInfo.from_proto(info.to_proto())
            copy.trace_id = trace_id
            copy.client_request_id = trace_id
            copy.request_time = old_ms + start + k
            # The store adds each trace's own artifact location; the template's would collide.
            copy.tags.pop("mlflow.artifactLocation", None)
            infos.append(copy)
        assert sqlstore.start_traces(store, infos) == {}
        with store.ManagedSessionMaker(read_only=False) as session:
            session.execute(
                insert(SqlSpan),
                [{**span, "trace_id": trace_id} for trace_id in trace_ids for span in spans],
            )
            if assessments:
                session.execute(
                    insert(SqlAssessments),
                    [
                        {
                            **a,
                            "trace_id": trace_id,
                            "assessment_id": f"a-{uuid.uuid4().hex}",
                            "trace_timestamp_ms": old_ms,
                        }
                        for trace_id in trace_ids[::10]  # every tenth rated
                        for a in assessments
                    ],
                )
        print(f"  [{start + size}/{n}] built", flush=True)


if __name__ == "__main__":
    main()
