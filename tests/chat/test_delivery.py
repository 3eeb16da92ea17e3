"""The delivery process writes each recorded trace to MLflow: complete, once, whatever fails."""

from datetime import timedelta

import mlflow
import pytest
from django.utils import timezone

from chat import delivery, tracing
from chat.models import TraceExport, Turn
from tests.conftest import deliver_traces
from tests.factories import TurnFactory

pytestmark = pytest.mark.django_db


def test_a_delivered_trace_is_complete_with_the_turns_own_timings_and_context(
    api, user, settings, get_trace
):
    settings.TRACE_TAGS = {"team": "support"}
    body = api.post(
        "/api/chat/",
        {"message": "Where is my parcel?"},
        format="json",
        headers={"X-Request-ID": "r-1"},
    ).json()
    export = TraceExport.objects.get(trace_id=body["trace_id"])
    recorded_root = export.payload["spans"][0]

    trace = get_trace(body["trace_id"])

    info = trace.info
    assert str(info.state.value if hasattr(info.state, "value") else info.state) == "OK"
    assert info.client_request_id == "r-1"
    assert info.trace_metadata["mlflow.trace.user"] == str(user.pk)
    assert info.trace_metadata["chat.username"] == user.username
    assert info.trace_metadata["mlflow.trace.session"] == body["session_id"]
    assert info.trace_metadata["environment"] == settings.APP_ENVIRONMENT
    assert info.trace_metadata["deployment_id"] == settings.DEPLOYMENT_ID
    assert info.tags["team"] == "support" and info.tags["endpoint"] == "api_chat"
    # No host details: only what the app sets.
    assert not [k for k in info.trace_metadata if k.startswith("mlflow.source.git")]
    assert "mlflow.user" not in info.trace_metadata
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"chat_turn", "load_history", "llm"}
    assert spans["chat_turn"].start_time_ns == recorded_root["start_ns"]
    assert spans["chat_turn"].end_time_ns == recorded_root["end_ns"]
    assert spans["llm"].parent_id == spans["chat_turn"].span_id
    assert spans["llm"].outputs["choices"][0]["message"]["content"] == body["response"]
    assert info.request_time == recorded_root["start_ns"] // 1_000_000
    export.refresh_from_db()
    assert export.state == TraceExport.State.EXPORTED and export.exported_at is not None


def test_the_stored_row_names_the_conversation_and_mlflow_gets_its_text(api, get_trace):
    import json

    first = api.post("/api/chat/", {"message": "Where is my parcel?"}, format="json").json()
    second = api.post(
        "/api/chat/",
        {"message": "And my refund?", "session_id": first["session_id"], "stream": False},
        format="json",
    ).json()
    texts = ["Where is my parcel?", first["response"], "And my refund?", second["response"]]

    # The row holds ids of the messages, none of their text, however long the conversation.
    stored = json.dumps(TraceExport.objects.get(trace_id=second["trace_id"]).payload)
    assert not [text for text in texts if text in stored]
    assert (
        len(stored)
        < len(json.dumps(TraceExport.objects.get(trace_id=first["trace_id"]).payload)) + 200
    )

    trace = get_trace(second["trace_id"])
    spans = {s.name: s for s in trace.data.spans}
    assert trace.info.request_preview == "And my refund?"
    assert trace.info.response_preview == second["response"][:1000]
    assert spans["chat_turn"].inputs["messages"] == [{"role": "user", "content": "And my refund?"}]
    assert spans["chat_turn"].outputs["choices"][0]["message"]["content"] == second["response"]
    assert spans["llm"].inputs["messages"][1:] == [
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": "And my refund?"},
    ]
    assert spans["llm"].inputs["messages"][0]["role"] == "system"
    assert spans["llm"].outputs["choices"][0]["message"]["content"] == second["response"]


def test_completing_a_payload_fills_each_reference_and_leaves_whole_texts_alone(settings):
    settings.TRACE_REDACT_PII = True
    ref = tracing.spans.message_ref
    stored = {
        "request_preview": ref(1),
        "response_preview": ref(2),
        "spans": [
            {"inputs": {"messages": [{"role": "user", "content": ref(1)}]}, "outputs": None},
            {"inputs": {"messages": [{"role": "user", "content": ref(3)}]}, "outputs": "x" * 5},
        ],
    }
    texts = {1: "mail me at a.b@example.com", 2: "y" * 1500}
    assert tracing.message_refs(stored) == {1, 2, 3}

    done = tracing.complete_payload(stored, texts)

    assert done["request_preview"] == "mail me at [EMAIL]"
    assert done["response_preview"] == "y" * 999 + "…"  # clipped after masking
    assert done["spans"][0]["inputs"]["messages"][0]["content"] == "mail me at [EMAIL]"
    # A message deleted before its trace was written (staff deleted its turn) says so.
    assert done["spans"][1]["inputs"]["messages"][0]["content"] == "[message deleted]"
    assert stored["request_preview"] == ref(1)  # the stored payload is not changed
    # A payload stored whole (version 1, before references) comes out as it went in.
    assert tracing.complete_payload(done, {}) == done


def test_writing_a_trace_again_adds_nothing(api, get_trace, find_traces):
    body = api.post("/api/chat/", {"message": "twice"}, format="json").json()
    get_trace(body["trace_id"])
    # As if a deliverer crashed after writing but before marking the row exported.
    delivery.trace_retry(trace_ids=[body["trace_id"]])
    deliver_traces()
    (trace,) = find_traces()
    assert len(get_trace(trace.info.trace_id).data.spans) == 3


def test_an_outage_of_any_length_is_waited_out_and_nothing_is_marked_failed(
    api, settings, mlflow_experiment
):
    settings.TRACE_MAX_ATTEMPTS = 2
    body = api.post("/api/chat/", {"message": "during an outage"}, format="json").json()
    good_uri = mlflow.get_tracking_uri()
    settings.MLFLOW_HTTP_REQUEST_TIMEOUT = 1
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name="gone")
    tracing.setup._destination.experiment_id = "1"  # as if resolved before the outage began

    for _ in range(4):  # more attempts than TRACE_MAX_ATTEMPTS: an outage never fails a trace
        TraceExport.objects.update(next_attempt_at=None)
        assert delivery.trace_deliver_due() == {"retry": 1}
    export = TraceExport.objects.get()
    assert export.state == TraceExport.State.PENDING and export.attempts == 4
    assert export.last_error.startswith("TrackingUnavailable")

    tracing.configure(tracking_uri=good_uri, experiment_name="back-again")
    TraceExport.objects.update(next_attempt_at=None)
    assert delivery.trace_deliver_due() == {"exported": 1}
    assert mlflow.MlflowClient().get_trace(body["trace_id"]).info.client_request_id


def test_a_row_leased_by_another_deliverer_is_left_to_it(api):
    api.post("/api/chat/", {"message": "mine"}, format="json")
    TraceExport.objects.update(
        leased_until=timezone.now() + timedelta(seconds=60), lease_owner="someone-else"
    )
    assert delivery.trace_deliver_due() == {}
    TraceExport.objects.update(leased_until=timezone.now() - timedelta(seconds=1))
    assert delivery.trace_deliver_due() == {"exported": 1}  # their lease expired: taken over


def test_feedback_waits_for_its_trace_instead_of_failing(api, turn_of, deliver_until_settled):
    from feedback import selectors as feedback_selectors
    from feedback.models import Feedback

    turn = turn_of()
    api.put(f"/api/messages/{turn['message_id']}/feedback/", {"is_correct": True}, format="json")
    feedback = Feedback.objects.get()
    assert feedback_selectors.feedback_due_ids(now=timezone.now(), limit=10) == []

    deliver_until_settled()  # delivers the trace, then the feedback
    feedback.refresh_from_db()
    assert feedback.delivery_state == Feedback.Delivery.DELIVERED and feedback.attempts == 1


def test_a_turn_whose_worker_died_is_closed_and_a_retry_answers_it(api, user, settings):
    turn = TurnFactory(
        session__owner=user,
        client_request_id="req-died",
        status=Turn.Status.PENDING,
        started_at=timezone.now() - timedelta(seconds=settings.TURN_ABANDONED_AFTER_S + 1),
    )
    from tests.factories import MessageFactory

    MessageFactory(turn=turn, content="are you there?")
    assert delivery.turn_close_abandoned() == [turn.pk]
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED and "Abandoned" in turn.error

    response = api.post(
        "/api/chat/",
        {"message": "are you there?", "session_id": str(turn.session_id)},
        format="json",
        headers={"X-Request-ID": "req-died"},
    )
    assert response.status_code == 200
    turn.refresh_from_db()
    assert turn.status == Turn.Status.COMPLETED and turn.attempts == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliverers_write_each_trace_once(api, find_traces):
    import threading

    from django.db import connection

    for i in range(30):
        api.post("/api/chat/", {"message": f"turn {i}"}, format="json")

    def deliverer():
        try:
            while delivery.trace_deliver_due(limit=7):
                pass
        finally:
            connection.close()

    threads = [threading.Thread(target=deliverer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    exports = TraceExport.objects.all()
    assert exports.count() == 30
    assert set(exports.values_list("state", flat=True)) == {TraceExport.State.EXPORTED}
    assert set(exports.values_list("attempts", flat=True)) == {1}  # nobody wrote one twice
    assert len(find_traces()) == 30
