"""Traces on demand: a sampled-out turn somebody cares about (feedback, a staff label, the review
queue, the admin action, `traces write`) gets its complete trace in MLflow, late and tagged."""

from datetime import timedelta

import mlflow
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from chat import audit, delivery, selectors, tracing
from chat.models import TraceExport, Turn
from feedback import services as feedback_services
from feedback.models import Feedback
from tests.chat.test_sampling import _audit, _mlflow_trace_ids, _turns_sampled_out
from tests.factories import FeedbackFactory

pytestmark = pytest.mark.django_db


def test_the_report_counts_sampled_out_turns_and_its_rates_stay_exact(
    settings, api, turn_of, mlflow_experiment
):
    settings.TRACE_SAMPLE_RATIO = 0.0
    a, b, c = turn_of("one"), turn_of("two"), turn_of("three")
    settings.TRACE_SAMPLE_RATIO = 1.0
    d = turn_of("four")
    for body, good in ((a, True), (b, False), (d, True)):
        url = f"/api/messages/{body['message_id']}/feedback/"
        assert api.put(url, {"is_correct": good}, format="json").status_code == 201

    from feedback import selectors as feedback_selectors

    (row,) = feedback_selectors.feedback_report(group_by="environment")
    assert row["turns"] == 4
    # Feedback asked for two of the three sampled-out traces: traced now, not sampled out.
    assert (row["traced"], row["sampled_out"]) == (3, 1)
    assert row["feedback_rate"] == 0.75 and row["positive_rate"] == round(2 / 3, 4)
    assert c["trace_id"] in TraceExport.objects.filter(state="sampled_out").values_list(
        "trace_id", flat=True
    )


def test_feedback_on_a_sampled_out_turn_writes_its_trace_late_then_the_assessment(
    settings, api, turn_of, mlflow_experiment, deliver_until_settled, assessments
):
    (body,) = _turns_sampled_out(settings, api, turn_of, n=1)
    trace_id = body["trace_id"]
    assert _mlflow_trace_ids(mlflow_experiment) == set()
    row = TraceExport.objects.get(trace_id=trace_id)
    payload = row.payload

    url = f"/api/messages/{body['message_id']}/feedback/"
    response = api.put(url, {"is_correct": False, "comment": "too short"}, format="json")
    assert response.status_code == 201
    row.refresh_from_db()
    assert (row.state, row.written_late) == ("pending", "feedback")
    assert row.requested_at is not None

    deliver_until_settled()
    trace = mlflow.MlflowClient().get_trace(trace_id)
    assert trace.info.tags[tracing.WRITTEN_LATE_TAG] == "feedback"
    # Its original timings, not the time it was written.
    assert trace.info.request_time == payload["start_ns"] // 1_000_000
    assert trace.info.execution_duration == (payload["end_ns"] - payload["start_ns"]) // 1_000_000
    spans = {s.span_id: s for s in trace.data.spans}
    for recorded in payload["spans"]:
        span = spans[f"{recorded['span_id']:016x}"]
        assert (span.start_time_ns, span.end_time_ns) == (recorded["start_ns"], recorded["end_ns"])
    assert trace.info.client_request_id == body["client_request_id"]
    assert trace.info.response_preview == body["response"][:1000]

    (assessment,) = assessments(trace_id)
    assert (assessment.name, assessment.feedback.value) == ("response_is_correct", False)
    assert assessment.rationale == "too short"
    assert Feedback.objects.get().delivery_state == Feedback.Delivery.DELIVERED
    accounting = selectors.trace_accounting()
    assert (accounting["in_mlflow"], accounting["sampled_out"]) == (1, 0)
    assert accounting["written_late"] == 1
    # The audit checks the late tag too, and finds the trace right.
    assert "MLflow matches the database" in _audit()


def test_feedback_stored_another_way_waits_for_its_trace_and_the_worker_asks_for_it(
    settings, api, turn_of, mlflow_experiment, deliver_until_settled, assessments
):
    (body,) = _turns_sampled_out(settings, api, turn_of, n=1)
    turn = Turn.objects.get()
    feedback = FeedbackFactory(turn=turn, user=turn.user, is_correct=True)

    # Not delivered onto a trace MLflow does not have, and no attempt spent on it.
    assert feedback_services.feedback_deliver_due() == {}
    feedback.refresh_from_db()
    assert (feedback.delivery_state, feedback.attempts) == ("pending", 0)

    assert feedback_services.feedback_request_traces() == 1
    assert feedback_services.feedback_request_traces() == 0  # asked once
    deliver_until_settled()
    (assessment,) = assessments(body["trace_id"])
    assert assessment.feedback.value is True
    assert TraceExport.objects.get().written_late == "feedback"


def test_a_staff_label_and_a_review_queue_visit_each_write_the_trace_with_their_reason(
    settings, api, turn_of, mlflow_experiment, admin_client, admin_user, deliver_until_settled
):
    labelled, reviewed = _turns_sampled_out(settings, api, turn_of, n=2)
    response = admin_client.post(
        "/admin/chat/turn/",
        {
            "action": "mark_correct",
            "_selected_action": [Turn.objects.get(trace_id=labelled["trace_id"]).pk],
        },
        follow=True,
    )
    assert response.status_code == 200
    # The user's thumbs down (stored directly: the API would ask for the trace itself) puts the
    # other one in the review queue, which asks for its trace as it shows it.
    turn = Turn.objects.get(trace_id=reviewed["trace_id"])
    FeedbackFactory(turn=turn, user=turn.user, is_correct=False)
    page = admin_client.get("/admin/chat/turn/review/")
    assert page.status_code == 200 and reviewed["response"][:30] in page.content.decode()

    rows = dict(TraceExport.objects.values_list("trace_id", "written_late"))
    assert rows == {labelled["trace_id"]: "label", reviewed["trace_id"]: "review"}
    deliver_until_settled()
    for body, why in ((labelled, "label"), (reviewed, "review")):
        trace = mlflow.MlflowClient().get_trace(body["trace_id"])
        assert trace.info.tags[tracing.WRITTEN_LATE_TAG] == why


def test_the_admin_action_writes_the_selected_turns_traces_now(
    settings, api, turn_of, mlflow_experiment, admin_client
):
    bodies = _turns_sampled_out(settings, api, turn_of, n=2)
    listing = admin_client.get("/admin/chat/turn/").content.decode()
    assert listing.count("sampled out") >= 2

    response = admin_client.post(
        "/admin/chat/turn/",
        {"action": "write_traces", "_selected_action": [t.pk for t in Turn.objects.all()]},
        follow=True,
    )
    assert "2 turn(s): 2 trace(s) in MLflow (2 sampled out, now asked for)" in (
        response.content.decode()
    )
    assert _mlflow_trace_ids(mlflow_experiment) == {b["trace_id"] for b in bodies}
    for body in bodies:
        trace = mlflow.MlflowClient().get_trace(body["trace_id"])
        assert trace.info.tags[tracing.WRITTEN_LATE_TAG] == "requested"
        assert len(trace.data.spans) == 3


def test_traces_write_by_turn_session_and_since_with_progress(
    settings, api, turn_of, mlflow_experiment, capsys
):
    first, second, third = _turns_sampled_out(settings, api, turn_of, n=3)
    turn = Turn.objects.get(trace_id=first["trace_id"])

    call_command("traces", "write", "--turn", str(turn.pk))
    out = capsys.readouterr().out
    assert "[1/1] written" in out
    assert "1 turn(s): 1 sampled-out trace(s) asked for; 1 in MLflow" in out
    assert _mlflow_trace_ids(mlflow_experiment) == {first["trace_id"]}

    call_command("traces", "write", "--session", second["session_id"])
    assert "1 turn(s): 1 sampled-out trace(s) asked for" in capsys.readouterr().out

    call_command("traces", "write", "--since", "1h")
    out = capsys.readouterr().out
    assert "3 turn(s): 1 sampled-out trace(s) asked for; 3 in MLflow" in out
    assert _mlflow_trace_ids(mlflow_experiment) == {
        first["trace_id"],
        second["trace_id"],
        third["trace_id"],
    }
    assert set(TraceExport.objects.values_list("written_late", flat=True)) == {"requested"}


def test_traces_write_refuses_what_it_cannot_read():
    with pytest.raises(CommandError, match="say which turns"):
        call_command("traces", "write")
    with pytest.raises(CommandError, match="expected a duration"):
        call_command("traces", "write", "--since", "yesterday-ish")
    with pytest.raises(CommandError, match="not a conversation id"):
        call_command("traces", "write", "--session", "nope")


def test_a_trace_asked_for_late_waits_from_when_it_was_asked_not_from_its_turn(
    settings, api, turn_of, mlflow_experiment, client
):
    (body,) = _turns_sampled_out(settings, api, turn_of, n=1)
    TraceExport.objects.update(created_at=timezone.now() - timedelta(days=3))
    assert delivery.trace_request(trace_ids=[body["trace_id"]], reason="requested") == 1

    # Asked for just now, not written yet (no deliverer ran): young, not overdue.
    metrics = client.get("/metrics").content.decode()
    age = float(metrics.split("\nchat_trace_oldest_pending_age_seconds ")[1].split()[0])
    assert 0 <= age < 60
    assert audit.traces_audit().overdue == []
    TraceExport.objects.update(requested_at=timezone.now() - timedelta(minutes=5))
    assert audit.traces_audit().overdue == [body["trace_id"]]
