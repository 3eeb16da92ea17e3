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
