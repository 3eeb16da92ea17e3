"""Against a real `mlflow server` process that the test stops and starts again."""

import time

import pytest

from chat import tracing
from feedback import services
from feedback.models import Feedback
from tests.conftest import deliver_traces
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_feedback_survives_a_tracking_server_outage(
    api, user, turn_of, mlflow_server, assessments, settings
):
    settings.FEEDBACK_RETRY_BASE_S = settings.FEEDBACK_RETRY_MAX_S = 600  # far past the outage...
    assert tracing.configure(tracking_uri=mlflow_server.url, experiment_name="outage")
    turn = turn_of(**{"X-Request-ID": "req-outage"})
    deliver_traces()  # the trace reaches the server before it goes down
    mlflow_server.stop()

    started = time.monotonic()
    response = api.post(
        "/api/chat_feedback?client_request_id=req-outage",
        {"is_correct": False, "comment": "server was down"},
        format="json",
    )
    answered_in = time.monotonic() - started
    assert response.status_code == 201
    assert answered_in < 1.0, answered_in

    started = time.monotonic()
    assert services.feedback_deliver_due()["pending"] == 1
    assert time.monotonic() - started < 10  # bounded: no 4-minute retry loop
    waiting = Feedback.objects.get()
    assert waiting.delivery_state == "pending" and "TrackingUnavailable" in waiting.last_error

    # A chat turn during the outage still answers.
    assert api.post("/api/chat/", {"message": "anyone?"}, format="json").status_code == 200

    mlflow_server.start()
    # ...until the worker's probe sees the server answer again.
    assert services.feedback_resume_after_outage() == 1
    assert services.feedback_deliver_due()["delivered"] == 1

    (assessment,) = assessments(turn["trace_id"])
    assert assessment.feedback.value is False
    assert assessment.rationale == "server was down"
    assert assessment.source.source_id == str(user.id)


def test_turns_before_the_server_comes_up_get_their_traces_once_it_does(api, tmp_path, monkeypatch):
    monkeypatch.setattr(tracing.setup, "RESOLVE_RETRY_INTERVAL_S", 0.5)
    server = MlflowServer(tmp_path / "late-server")
    assert tracing.configure(tracking_uri=server.url, experiment_name="late") is False
    early = api.post("/api/chat/", {"message": "early"}, format="json").json()
    assert early["trace_id"] is not None  # recorded now, delivered once MLflow is there
    server.start()
    try:
        deadline = time.monotonic() + 30
        while not tracing.is_ready():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        later = api.post("/api/chat/", {"message": "later"}, format="json").json()
        deliver_traces()
        import mlflow

        for body in (early, later):
            info = mlflow.MlflowClient().get_trace(body["trace_id"]).info
            assert info.client_request_id == body["client_request_id"]
            assert info.request_preview == ("early" if body is early else "later")
    finally:
        server.stop()
