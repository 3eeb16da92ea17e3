"""Retention against the real database and a real MLflow store (the run's SQLite one).

The pass's cut-offs are fixed when it starts; a pass started "30 days after" a moment between
the old turns and the new ones makes exactly the old ones older than 30 days, with the traces
MLflow really holds (their start times are the turns' own).
"""

import os
import time
from datetime import timedelta

import mlflow
import pytest
from django.core.management import call_command
from django.utils import timezone

from chat import tracing
from chat.models import ChatSession, Message, TraceExport, Turn
from feedback import services as feedback_services
from feedback.models import Feedback
from privacy import retention
from privacy.models import RetentionPass
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

DAYS = 30


@pytest.fixture
def aged(settings, user, api, turn_of, deliver_until_settled, find_traces, live_trace_of):
    """Old: a conversation of two turns (with feedback and a staff label), the first turn of a
    conversation still active, and a trace MLflow's own tracer wrote (no row names it).
    Then `moment`; then new: the active conversation's second turn, and another conversation."""
    settings.TRACE_RETENTION_DAYS = DAYS
    settings.CONVERSATION_RETENTION_DAYS = DAYS
    staff = UserFactory(is_staff=True)
    old1 = turn_of("old one")
    old2 = turn_of("old two", **{"X-Session-ID": old1["session_id"]})
    active_old = turn_of("active, its first turn")
    stray_id, stray_folder = live_trace_of(user.pk)
    url = f"/api/messages/{old1['message_id']}/feedback/"
    assert api.put(url, {"rating": 1}, format="json").status_code == 201
    feedback_services.feedback_submit(
        user=staff, turn=Turn.objects.get(trace_id=old2["trace_id"]), is_correct=False
    )
    deliver_until_settled()
    time.sleep(0.01)
    moment = timezone.now()
    time.sleep(0.01)
    active_new = turn_of("active, its second turn", **{"X-Session-ID": active_old["session_id"]})
    new = turn_of("new")
    deliver_until_settled()
    assert len(find_traces()) == 6
    return {
        "moment": moment,
        "old": [old1, old2],
        "active_old": active_old,
        "active_new": active_new,
        "new": new,
        "stray": (stray_id, stray_folder),
    }


def _run(moment) -> RetentionPass:
    """A pass started DAYS after `moment`, worked through to the end, in batches of 2."""
    done = retention.retention_pass_start(
        via=RetentionPass.Via.COMMAND, now=moment + timedelta(days=DAYS)
    )
    for _ in range(50):
        if retention.retention_step(retention=done, batch=2):
            return done
    raise AssertionError("the pass did not finish in 50 batches")


def test_a_pass_removes_what_is_older_counts_it_and_checks_nothing_older_is_left(aged, find_traces):
    old_ids = [t["trace_id"] for t in aged["old"]] + [aged["active_old"]["trace_id"]]
    stray_id, stray_folder = aged["stray"]

    done = _run(aged["moment"])

    assert done.state == RetentionPass.State.COMPLETED, done.last_error
    assert done.removed == {
        # The old conversation, whole: its turns, messages, feedback, trace rows.
        "sessions": 1,
        "turns": 2,
        "messages": 4,
        "feedback": 2,
        "trace_rows": 3,  # its two, then the active conversation's old turn's
        # Its two traces, then the active conversation's old one, then the stray one.
        "traces": 4,
        "artifacts": 1,
    }
    assert done.remaining == {"sessions": 0, "trace_rows": 0, "traces": 0}
    assert done.finished_at is not None

    left = {t.info.trace_id for t in find_traces()}
    assert left == {aged["active_new"]["trace_id"], aged["new"]["trace_id"]}
    assert not set(old_ids) & left and stray_id not in left
    assert not os.path.exists(stray_folder)
    # The active conversation stays whole in the database (its old turn without a trace row).
    active = ChatSession.objects.get(pk=aged["active_old"]["session_id"])
    assert active.turns.count() == 2
    assert Message.objects.filter(session=active).count() == 4
    assert not TraceExport.objects.filter(trace_id__in=old_ids).exists()
    assert not ChatSession.objects.filter(pk=aged["old"][0]["session_id"]).exists()
    assert Feedback.objects.count() == 0


def test_a_second_pass_finds_nothing_and_removes_nothing(aged):
    _run(aged["moment"])

    again = _run(aged["moment"])

    assert again.state == RetentionPass.State.COMPLETED
    assert again.removed == {}


def test_conversation_retention_alone_leaves_traces_and_trace_retention_alone_conversations(
    settings, aged, find_traces
):
    settings.TRACE_RETENTION_DAYS = None
    only_conversations = _run(aged["moment"])
    assert only_conversations.trace_cutoff is None
    assert only_conversations.removed["sessions"] == 1
    assert "traces" not in only_conversations.removed
    assert len(find_traces()) == 6  # MLflow untouched (privacy.W001 warns of exactly this)

    settings.TRACE_RETENTION_DAYS, settings.CONVERSATION_RETENTION_DAYS = DAYS, None
    only_traces = _run(aged["moment"])
    assert only_traces.conversation_cutoff is None
    assert only_traces.removed == {"traces": 4, "trace_rows": 1, "artifacts": 1}
    assert ChatSession.objects.filter(pk=aged["active_old"]["session_id"]).exists()


def test_with_the_tracking_store_down_the_pass_waits_and_deletes_no_row_naming_a_trace(
    settings, aged, find_traces
):
    settings.CONVERSATION_RETENTION_DAYS = None
    rows_before = TraceExport.objects.count()
    name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=name)
    try:
        waiting = _run(aged["moment"])
        assert waiting.state == RetentionPass.State.PENDING_MLFLOW
        assert waiting.last_error.startswith("TrackingUnavailable")
        assert TraceExport.objects.count() == rows_before
    finally:
        assert tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=name)

    for _ in range(50):
        if retention.retention_step(retention=waiting, batch=2):
            break
    assert waiting.state == RetentionPass.State.COMPLETED, waiting.last_error
    assert waiting.removed["traces"] == 4
    assert len(find_traces()) == 2


def test_the_worker_chore_starts_a_pass_per_interval_and_works_through_it(settings, aged):
    settings.RETENTION_INTERVAL_S = 3600
    settings.RETENTION_BATCH = 2
    later = aged["moment"] + timedelta(days=DAYS)

    lines = retention.retention_due(now=later)

    (first,) = RetentionPass.objects.all()
    assert first.via == RetentionPass.Via.WORKER
    assert first.state == RetentionPass.State.COMPLETED, first.last_error
    assert lines and lines[-1].startswith(f"retention pass {first.pk}: completed, removed")
    assert retention.retention_due(now=later + timedelta(minutes=5)) == []
    assert RetentionPass.objects.count() == 1
    retention.retention_due(now=later + timedelta(hours=2))
    assert RetentionPass.objects.count() == 2


def test_feedback_on_a_turn_past_trace_retention_fails_saying_why(settings, user, api, turn_of):
    settings.TRACE_RETENTION_DAYS = DAYS
    sent = turn_of("answered long ago")
    turn = Turn.objects.get(trace_id=sent["trace_id"])
    Turn.objects.filter(pk=turn.pk).update(created_at=timezone.now() - timedelta(days=DAYS + 1))
    TraceExport.objects.filter(turn=turn).delete()  # what retention leaves: no row, no trace
    url = f"/api/messages/{sent['message_id']}/feedback/"
    assert api.put(url, {"is_correct": False}, format="json").status_code == 201
    feedback = Feedback.objects.get(turn=turn)

    feedback_services.feedback_deliver(feedback_id=feedback.pk)

    feedback.refresh_from_db()
    assert feedback.delivery_state == Feedback.Delivery.FAILED
    assert "TRACE_RETENTION_DAYS" in feedback.last_error


def test_the_command_refuses_when_retention_is_off_and_reports_a_pass(settings, aged, capsys):
    settings.TRACE_RETENTION_DAYS = settings.CONVERSATION_RETENTION_DAYS = None
    with pytest.raises(Exception, match="retention is off"):
        call_command("apply_retention")

    settings.TRACE_RETENTION_DAYS = 1
    call_command("apply_retention", "--batch", "10")  # nothing here is a day old

    out = capsys.readouterr().out
    assert "removed nothing" in out
    assert "completed; checked: 0 trace_rows, 0 traces older" in out
