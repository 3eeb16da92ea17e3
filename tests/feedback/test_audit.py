"""`manage.py audit_traces`: MLflow checked against the database, and repaired from it."""

import mlflow
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chat import selectors, tracing
from chat.models import TraceExport
from feedback.models import Feedback

pytestmark = pytest.mark.django_db


@pytest.fixture
def settled(api, turn_of, deliver_until_settled, mlflow_experiment):
    turns = [turn_of(f"question {i}") for i in range(3)]
    for turn in turns:
        url = f"/api/messages/{turn['message_id']}/feedback/"
        api.put(url, {"is_correct": True, "expected_response": "right"}, format="json")
    deliver_until_settled()
    return turns


def _audit(capsys, *args) -> tuple[int, str]:
    try:
        call_command("audit_traces", *args)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, capsys.readouterr().out


def test_a_clean_store_passes(settled, capsys):
    code, out = _audit(capsys)
    assert code == 0, out
    assert "traces: 3 checked in MLflow, 0 wrong or missing" in out
    assert "feedback: 3 checked in MLflow, 0 differ" in out


def test_each_kind_of_damage_is_found_and_repaired(settled, capsys, mlflow_experiment):
    client = mlflow.MlflowClient()
    lost, halved, _ = (t["trace_id"] for t in settled)
    client.delete_traces(experiment_id=mlflow_experiment, trace_ids=[lost])
    # Half-written: the trace info is there, the spans of one child are not.
    recorded = selectors.trace_payloads([TraceExport.objects.get(trace_id=halved)])[0]
    tracing.delete_traces([halved])
    partial = {**recorded, "spans": recorded["spans"][:2]}
    assert tracing.write_traces([partial]) == {}
    # A stray trace nobody's turn knows, and feedback MLflow holds another value for.
    stray = {**recorded, "trace_id": "tr-" + "ab" * 16, "spans": []}
    stray["spans"] = [
        {**s, "span_id": s["span_id"] + 1, "parent_id": None} for s in recorded["spans"][:1]
    ]
    tracing.write_traces([stray])
    changed = Feedback.objects.get(turn__trace_id=settled[2]["trace_id"])
    Feedback.objects.filter(pk=changed.pk).update(is_correct=False)  # as if a write got lost

    code, out = _audit(capsys)
    assert code == 1
    assert f"{lost}: missing" in out
    assert f"{halved}: half-written (2 of 3 spans)" in out
    assert "tr-" + "ab" * 16 + ": in MLflow, no turn" in out
    assert f"feedback {changed.pk}: MLflow has True, the database False" in out

    code, out = _audit(capsys, "--repair")
    assert "repaired: 2 trace(s) written" in out
    assert "after repair: feedback: 3 checked in MLflow, 0 differ" in out
    for trace_id in (lost, halved):
        assert len(client.get_trace(trace_id).data.spans) == 3
    # Only the stray trace is left: reported, never deleted.
    assert code == 1 and "after repair: traces: 3 checked in MLflow, 0 wrong or missing" in out


def _vote(api, turn, **body) -> None:
    url = f"/api/messages/{turn['message_id']}/feedback/"
    response = api.put(url, body, format="json")
    assert response.status_code in (200, 201), response.content


def test_an_assessment_of_ours_the_row_does_not_hold_is_reported_and_repair_removes_it(
    api, user, turn_of, deliver_until_settled, assessments, capsys
):
    from mlflow.entities import AssessmentSource

    turn = turn_of()
    _vote(api, turn, is_correct=False, expected_response="Ten days.")
    deliver_until_settled()
    _vote(api, turn, rating=3)
    deliver_until_settled()
    feedback = Feedback.objects.get()
    # Left behind, tagged with the row: the earlier thumbs and answer, and a second rating.
    tagged = {
        "trace_id": turn["trace_id"],
        "source": AssessmentSource(source_type="HUMAN", source_id=str(user.pk)),
        "metadata": {tracing.assessments.ASSESSMENT_KEY: str(feedback.pk)},
    }
    mlflow.log_feedback(name="response_is_correct", value=False, **tagged)
    mlflow.log_expectation(name="expected_response", value="Ten days.", **tagged)
    mlflow.log_feedback(name="user_rating", value=3, **tagged)

    code, out = _audit(capsys)
    assert code == 1
    assert (
        f"feedback {feedback.pk}: user_rating there 2 times; "
        "response_is_correct False on the trace, the row does not hold it; "
        "an expected response on the trace, the row does not hold it"
    ) in out

    code, out = _audit(capsys, "--repair")
    assert "after repair: feedback: 1 checked in MLflow, 0 differ" in out
    assert code == 0, out
    assert [(a.name, a.feedback.value) for a in assessments(turn["trace_id"])] == [
        ("user_rating", 3)
    ]


def test_the_old_thumbs_a_vote_change_brought_back_is_reported_and_repaired_for_good(
    api, user, turn_of, deliver_until_settled, assessments, capsys
):
    """The trace issue 19 left, and the repair: removing only the thumbs standing would make
    MLflow bring back the one before it, so its whole history goes."""
    from django.db.models import F
    from mlflow.entities import AssessmentSource

    turn = turn_of()
    for is_correct in (True, False, True):
        _vote(api, turn, is_correct=is_correct)
        deliver_until_settled()
    _vote(api, turn, rating=3)
    feedback = Feedback.objects.get()
    # What delivering it did before the fix: delete the valid thumbs (MLflow makes the one it
    # superseded, False, valid again) and log the rating.
    mlflow.delete_assessment(
        trace_id=turn["trace_id"], assessment_id=feedback.feedback_assessment_id
    )
    mlflow.log_feedback(
        trace_id=turn["trace_id"],
        name="user_rating",
        value=3,
        source=AssessmentSource(source_type="HUMAN", source_id=str(user.pk)),
        metadata={tracing.assessments.ASSESSMENT_KEY: str(feedback.pk)},
    )
    Feedback.objects.filter(pk=feedback.pk).update(
        delivery_state="delivered", delivered_version=F("version")
    )
    assert sorted((a.name, a.feedback.value) for a in assessments(turn["trace_id"])) == [
        ("response_is_correct", False),
        ("user_rating", 3),
    ]

    code, out = _audit(capsys)
    assert code == 1
    assert (
        f"feedback {feedback.pk}: response_is_correct False on the trace, the row does not hold it"
    ) in out

    code, out = _audit(capsys, "--repair")
    assert code == 0, out
    assert [a.name for a in assessments(turn["trace_id"], include_invalid=True)] == ["user_rating"]


def test_an_audit_since_a_time_reads_that_time_by_index_not_every_row_of_the_store(settled, capsys):
    """`audit_traces --since 1d` on a store of a million traces must read a day's rows: every
    query it makes finds them through an index, none walks a whole table (SQLite's plans, which
    it makes without statistics as the app never runs ANALYZE; bench/store_scale.py times it)."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's query plans")
    since = (timezone.now() - timedelta(days=1)).isoformat()
    with CaptureQueriesContext(connection) as queries:
        code, out = _audit(capsys, "--since", since)
    assert code == 0, out
    assert "traces: 3 checked in MLflow" in out

    walks = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            if not query["sql"].startswith("SELECT"):
                continue
            cursor.execute(f"EXPLAIN QUERY PLAN {query['sql']}")
            plan = [row[3] for row in cursor.fetchall()]
            if any(step.startswith("SCAN ") for step in plan):
                walks.append((query["sql"][:200], plan))
    assert walks == []
