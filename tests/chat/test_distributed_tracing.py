"""A turn called with a W3C traceparent joins the caller's trace and passes it on to the LLM."""

import uuid

import pytest

from chat import tracing
from chat.models import TraceExport, Turn

pytestmark = pytest.mark.django_db

CALLER_SPAN = "f0f067aa0ba902b7"  # high bit set: a span id past 2**63 survives the JSON row
# Only in headers that must be ignored: never becomes a trace id.
IGNORED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def caller() -> str:
    """A fresh caller trace id per test: MLflow's trace ids are global to the store."""
    return uuid.uuid4().hex


def traceparent(caller: str) -> str:
    return f"00-{caller}-{CALLER_SPAN}-01"


def _post(api, headers, message="Where is my parcel?", **body):
    response = api.post("/api/chat/", {"message": message, **body}, format="json", headers=headers)
    assert response.status_code == 200
    if body.get("stream"):
        b"".join(response)  # the turn runs as the stream is read
    return response


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_a_turn_called_with_a_traceparent_is_part_of_the_callers_trace(
    stream, caller, api, llm_server, get_trace
):
    response = _post(api, {"traceparent": traceparent(caller)}, stream=stream)
    trace_id = f"tr-{caller}"
    if not stream:
        assert response.json()["trace_id"] == trace_id
    assert Turn.objects.get().trace_id == trace_id

    trace = get_trace(trace_id)

    assert trace.info.trace_id == trace_id
    assert str(getattr(trace.info.state, "value", trace.info.state)) == "OK"
    spans = {s.name: s for s in trace.data.spans}
    assert spans["chat_turn"].parent_id == CALLER_SPAN
    assert spans["llm"].parent_id == spans["chat_turn"].span_id
    assert {s.trace_id for s in trace.data.spans} == {trace_id}
    # The LLM endpoint was called inside the turn's llm span, and was told so.
    (headers,) = llm_server.chat_headers()
    assert headers["traceparent"] == f"00-{caller}-{spans['llm'].span_id}-01"
    # The audit sees nothing wrong with a root span whose parent lives in another service.
    export = TraceExport.objects.get()
    assert tracing.trace_problems([trace_id], {trace_id: export.payload}) == {trace_id: ""}


def test_the_callers_tracestate_goes_on_to_the_llm(caller, api, llm_server):
    _post(api, {"traceparent": traceparent(caller), "tracestate": "vendor=abc,other=1"})
    (headers,) = llm_server.chat_headers()
    assert headers["tracestate"] == "vendor=abc,other=1"


def test_without_a_traceparent_the_llm_is_told_the_turns_own_trace(api, llm_server, get_trace):
    body = _post(api, {}).json()
    spans = {s.name: s for s in get_trace(body["trace_id"]).data.spans}
    assert spans["chat_turn"].parent_id is None
    (headers,) = llm_server.chat_headers()
    assert headers["traceparent"] == f"00-{body['trace_id'][3:]}-{spans['llm'].span_id}-01"
    assert "tracestate" not in headers


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"00-{IGNORED_TRACE}-{CALLER_SPAN}",  # no flags
        f"ff-{IGNORED_TRACE}-{CALLER_SPAN}-01",  # version 255 is invalid
        f"00-{'0' * 32}-{CALLER_SPAN}-01",  # all-zero trace id
        f"00-{IGNORED_TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{IGNORED_TRACE.upper()}-{CALLER_SPAN}-01",  # hex must be lower case
        f"00-{IGNORED_TRACE}-{CALLER_SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{IGNORED_TRACE}1-{CALLER_SPAN}-01",
        "00-" + "é" * 32 + f"-{CALLER_SPAN}-01",
        "x" * 4000,
    ],
)
def test_a_malformed_traceparent_is_ignored_and_the_turn_traced_on_its_own(value, api, get_trace):
    body = _post(api, {"traceparent": value}).json()
    assert body["trace_id"] != f"tr-{IGNORED_TRACE}"
    spans = {s.name: s for s in get_trace(body["trace_id"]).data.spans}
    assert spans["chat_turn"].parent_id is None


def test_callers_traces_are_not_joined_when_switched_off(caller, settings, api, llm_server):
    settings.TRACE_JOIN_CALLERS = False
    body = _post(api, {"traceparent": traceparent(caller)}).json()
    assert body["trace_id"] != f"tr-{caller}"
    (headers,) = llm_server.chat_headers()
    assert headers["traceparent"].startswith(f"00-{body['trace_id'][3:]}-")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_with_tracing_off_the_callers_context_is_passed_on_to_the_llm_as_it_came(
    stream, caller, settings, api, llm_server
):
    settings.TRACING_ENABLED = False
    _post(api, {"traceparent": traceparent(caller), "tracestate": "v=1"}, stream=stream)
    (headers,) = llm_server.chat_headers()
    assert (headers["traceparent"], headers["tracestate"]) == (traceparent(caller), "v=1")


def test_a_later_version_of_the_header_is_read_for_its_first_four_fields(caller, api):
    body = _post(api, {"traceparent": f"01-{caller}-{CALLER_SPAN}-01-future"}).json()
    assert body["trace_id"] == f"tr-{caller}"


def test_a_second_turn_under_the_same_caller_span_gets_a_trace_of_its_own(caller, api, get_trace):
    first = _post(api, {"traceparent": traceparent(caller)}, message="one").json()
    second = _post(api, {"traceparent": traceparent(caller)}, message="two").json()

    assert first["trace_id"] == f"tr-{caller}"
    assert second["trace_id"] != first["trace_id"]
    root = {s.name: s for s in get_trace(second["trace_id"]).data.spans}["chat_turn"]
    assert root.parent_id is None
    assert root.attributes["caller.trace_id"] == caller
    assert root.attributes["caller.span_id"] == CALLER_SPAN
    assert get_trace(first["trace_id"]).info.request_preview == "one"


def test_turns_racing_into_one_callers_trace_each_keep_one_trace(caller, api, monkeypatch):
    from chat import selectors

    # As if both had checked before either stored its trace.
    monkeypatch.setattr(selectors, "trace_recorded", lambda **_: False)
    first = _post(api, {"traceparent": traceparent(caller)}, message="one").json()
    second = _post(api, {"traceparent": traceparent(caller)}, message="two").json()

    assert first["trace_id"] == f"tr-{caller}" != second["trace_id"]
    turn = Turn.objects.get(client_request_id=second["client_request_id"])
    assert turn.trace_id == second["trace_id"]
    assert TraceExport.objects.get(turn=turn).trace_id == second["trace_id"]


def test_turns_that_joined_a_callers_trace_export_as_evaluation_records(api, deliver_until_settled):
    import mlflow.genai.datasets

    from feedback import services as feedback_services

    for message in ("first question", "second question"):
        turn = _post(api, {"traceparent": traceparent(uuid.uuid4().hex)}, message=message).json()
        api.put(
            f"/api/messages/{turn['message_id']}/feedback/",
            {"is_correct": False, "expected_response": f"better answer to {message}"},
            format="json",
        )
    deliver_until_settled()

    name = f"joined-{uuid.uuid4().hex[:8]}"
    result = feedback_services.eval_dataset_export(name=name)

    assert (result.traces, result.records) == (2, 2)
    records = mlflow.genai.datasets.get_dataset(name=name).to_df()
    by_question = {r["inputs"]["messages"][0]["content"]: r for _, r in records.iterrows()}
    assert set(by_question) == {"first question", "second question"}
    assert by_question["first question"]["expectations"] == {
        "expected_response": "better answer to first question"
    }


@pytest.mark.parametrize("caller_first", [True, False], ids=["caller-first", "turn-first"])
def test_a_caller_traced_with_mlflow_sees_the_turn_inside_its_own_trace(
    caller_first, api, user, mlflow_experiment
):
    import mlflow
    from mlflow.tracing import get_tracing_context_headers_for_http_request

    from tests.conftest import deliver_traces

    mlflow.set_experiment(experiment_id=mlflow_experiment)  # the caller traces where we do
    with mlflow.start_span("upstream_agent") as caller_span:
        headers = get_tracing_context_headers_for_http_request()
        body = _post(api, headers, message="asked by an agent").json()
        if not caller_first:
            deliver_traces()
    mlflow.flush_trace_async_logging()
    deliver_traces()

    assert body["trace_id"] == caller_span.trace_id
    trace = mlflow.MlflowClient().get_trace(caller_span.trace_id)
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"upstream_agent", "chat_turn", "load_history", "llm"}
    assert spans["chat_turn"].parent_id == caller_span.span_id
    # Whichever tracer wrote the trace info last, the turn's own span says who asked.
    assert spans["chat_turn"].attributes["chat.user_id"] == str(user.pk)
    assert spans["chat_turn"].attributes["chat.username"] == user.username
    assert spans["chat_turn"].inputs["client_request_id"] == body["client_request_id"]
    export = TraceExport.objects.get()
    problems = tracing.trace_problems([body["trace_id"]], {body["trace_id"]: export.payload})
    assert problems == {body["trace_id"]: ""}


def test_repairing_a_half_written_turn_in_a_callers_trace_keeps_the_callers_spans(
    api, mlflow_experiment
):
    import mlflow
    from mlflow.tracing import get_tracing_context_headers_for_http_request

    from chat import audit
    from tests.conftest import deliver_traces

    mlflow.set_experiment(experiment_id=mlflow_experiment)  # the caller traces where we do
    with mlflow.start_span("upstream_agent"):
        body = _post(api, get_tracing_context_headers_for_http_request()).json()
    mlflow.flush_trace_async_logging()
    deliver_traces()
    # As if one of the turn's spans never reached MLflow.
    export = TraceExport.objects.get()
    lost = {**export.payload["spans"][-1], "span_id": 12345, "name": "lost_span"}
    export.payload["spans"].append(lost)
    export.save(update_fields=["payload"])

    found = audit.traces_audit()
    assert found.problems == {body["trace_id"]: "half-written (3 of 4 spans)"}
    assert audit.traces_repair(found) == 1

    names = {s.name for s in mlflow.MlflowClient().get_trace(body["trace_id"]).data.spans}
    assert names == {"upstream_agent", "chat_turn", "load_history", "llm", "lost_span"}
    assert not audit.traces_audit().problems


@pytest.mark.slow
def test_through_a_tracking_server_a_masked_turn_joins_the_callers_trace(
    tmp_path, caller, settings, api, llm_server
):
    import mlflow

    from tests.conftest import deliver_traces
    from tests.mlflow_server import MlflowServer

    settings.TRACE_REDACT_PII = True
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        assert tracing.configure(tracking_uri=server.url, experiment_name="distributed")
        message = "I am jane@example.com, card 4111 1111 1111 1111"
        body = _post(api, {"traceparent": traceparent(caller)}, message=message).json()
        deliver_traces()

        trace = mlflow.MlflowClient(server.url).get_trace(body["trace_id"])
        assert trace.info.trace_id == f"tr-{caller}"
        assert str(getattr(trace.info.state, "value", trace.info.state)) == "OK"
        assert trace.info.request_preview == "I am [EMAIL], card [CARD]"
        spans = {s.name: s for s in trace.data.spans}
        assert spans["chat_turn"].parent_id == CALLER_SPAN
        assert spans["llm"].inputs["messages"][-1]["content"] == "I am [EMAIL], card [CARD]"
        (headers,) = llm_server.chat_headers()
        assert headers["traceparent"] == f"00-{caller}-{spans['llm'].span_id}-01"
    finally:
        server.stop()
