import os
import random
import socket
import time

import pytest

from chat import tracing
from chat.models import TraceExport, Turn

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracking_server_neither_blocks_start_up_nor_loses_a_turns_trace(
    api, settings
):
    settings.MLFLOW_HTTP_REQUEST_TIMEOUT = 2
    started = time.monotonic()
    ready = tracing.configure(
        tracking_uri=f"http://127.0.0.1:{_closed_port()}", experiment_name="unreachable"
    )
    assert ready is False
    assert time.monotonic() - started < 10

    response = api.post("/api/chat/", {"message": "still there?"}, format="json")

    assert response.status_code == 200
    assert response.json()["response"].startswith("You asked")
    turn = Turn.objects.get()
    assert turn.status == Turn.Status.COMPLETED
    # The trace is recorded with the answer and waits in the database for MLflow.
    assert response.json()["trace_id"] == turn.trace_id
    export = TraceExport.objects.get(turn=turn)
    assert export.trace_id == turn.trace_id and export.state == TraceExport.State.PENDING
    assert export.payload["client_request_id"] == turn.client_request_id


def test_tracing_switched_off_by_setting_answers_untraced(api, settings, find_traces):
    settings.TRACING_ENABLED = False
    assert tracing.configure() is False
    assert tracing.is_ready() is False
    response = api.post("/api/chat/", {"message": "hi"}, format="json")
    assert response.status_code == 200 and response.json()["trace_id"] is None


def test_a_trace_id_is_read_inside_the_turn_not_from_the_last_active_trace(api, get_trace):
    a = api.post("/api/chat/", {"message": "a"}, format="json").json()
    b = api.post("/api/chat/", {"message": "b"}, format="json").json()
    assert a["trace_id"] != b["trace_id"]
    assert get_trace(a["trace_id"]).info.request_preview == "a"
    assert get_trace(b["trace_id"]).info.request_preview == "b"


def test_child_spans_outside_a_turn_are_no_ops():
    from chat.llm import ChatMessage

    with tracing.llm_span(messages=[ChatMessage("user", "x")], model="m") as span:
        span.set_inputs({"x": 1})
    assert span.trace_id is None


def test_trace_and_span_ids_are_made_without_a_system_call(monkeypatch):
    # os.urandom lets go of the GIL: on the event loop, getting it back waits for a unit thread.
    def no_system_call(n):
        raise AssertionError("os.urandom read for an id")

    monkeypatch.setattr(os, "urandom", no_system_call)
    monkeypatch.setattr(random, "_urandom", no_system_call)  # secrets / SystemRandom
    with tracing.turn_trace(
        message="hi", user_id=1, username="u", session_id="s", client_request_id="r", endpoint="e"
    ) as trace:
        with tracing.history_span(session_id="s") as history:
            pass
        with tracing.llm_span(messages=[], model="m") as llm:
            pass
    span_ids = {trace.span_id, history.span_id, llm.span_id}
    assert len(span_ids) == 3 and all(0 < s < 2**63 for s in span_ids)
    assert trace.trace_id == f"tr-{trace.otel_trace_id:032x}" and trace.otel_trace_id > 0


def test_ids_do_not_repeat_when_something_seeds_random():
    # Hypothesis and pytest-randomly seed `random` before each example and test; a script may.
    random.seed(18)
    first = tracing.new_trace_id()
    random.seed(18)
    assert tracing.new_trace_id() != first


def test_forked_workers_draw_different_trace_ids():
    # gunicorn forks its workers: the id generator is reseeded in a child, so ids do not repeat.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, tracing.new_trace_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child.startswith("tr-") and child != tracing.new_trace_id()


def test_a_trace_names_its_user_by_username_beside_the_stable_id(
    settings, mlflow_experiment, get_trace, find_traces
):
    from tests.conftest import token_client
    from tests.factories import UserFactory

    settings.TRACE_REDACT_PII = True  # a username is who asked, not content: kept as it is
    person = UserFactory(username="zoë.martin@example.com")
    body = token_client(person).post("/api/chat/", {"message": "hi"}, format="json").json()

    metadata = get_trace(body["trace_id"]).info.trace_metadata
    assert metadata["mlflow.trace.user"] == str(person.pk)
    assert metadata[tracing.USERNAME_KEY] == "zoë.martin@example.com"
    (found,) = find_traces(f"metadata.`{tracing.USERNAME_KEY}` = 'zoë.martin@example.com'")
    assert found.info.trace_id == body["trace_id"]
