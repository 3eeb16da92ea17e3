import json

import pytest
from mlflow.tracing.constant import TraceMetadataKey

from chat.models import Turn

pytestmark = pytest.mark.django_db


def events_of(response, *, stop_after: int | None = None) -> list[tuple[str, dict]]:
    """Parse a streamed answer's server-sent events (closing the stream early if asked)."""
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events, buffer = [], ""
    for chunk in response.streaming_content:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            raw, buffer = buffer.split("\n\n", 1)
            kind = raw.split("\n")[0].removeprefix("event: ")
            data = json.loads(raw.split("\n")[1].removeprefix("data: "))
            events.append((kind, data))
            if stop_after is not None and len(events) >= stop_after:
                # What the server does when the client goes away: close the response's
                # iterator (the test client's wrapper keeps the test's DB connection open).
                response._iterator.close()
                return events
    return events


def stream(api, message="Tell me about streaming", headers=None, **body):
    return api.post(
        "/api/chat/", {"message": message, "stream": True, **body}, format="json", headers=headers
    )


def test_a_streamed_turn_is_one_trace_with_the_full_reply_and_usage(
    api, user, find_traces, get_trace
):
    events = events_of(stream(api, headers={"X-Request-ID": "stream-1"}))

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") > 5
    done = events[-1][1]
    assert "".join(d["text"] for k, d in events if k == "token") == done["response"]
    assert events[0][1]["trace_id"] == done["trace_id"]

    (trace,) = find_traces("attributes.client_request_id = 'stream-1'")
    assert trace.info.state == "OK"
    assert trace.info.trace_metadata[TraceMetadataKey.TRACE_USER] == str(user.id)
    assert trace.info.trace_metadata[TraceMetadataKey.TRACE_SESSION] == done["session_id"]
    assert trace.info.response_preview == done["response"]
    turn = Turn.objects.get()
    assert trace.info.token_usage["output_tokens"] == turn.completion_tokens > 0
    llm = next(s for s in get_trace(done["trace_id"]).data.spans if s.name == "llm")
    assert llm.outputs["choices"][0]["message"]["content"] == done["response"]


def test_accept_event_stream_asks_for_a_stream_too(api):
    response = api.post(
        "/api/chat/", {"message": "hi"}, format="json", headers={"Accept": "text/event-stream"}
    )
    assert [kind for kind, _ in events_of(response)][-1] == "done"


def test_the_openai_compatible_backend_streams(api, llm_server):
    events = events_of(stream(api, "one two three"))
    tokens = [d["text"] for k, d in events if k == "token"]
    assert "".join(tokens) == "echo[2]: one two three" and len(tokens) == 4
    turn = Turn.objects.get()
    assert (turn.model, turn.prompt_tokens, turn.completion_tokens) == ("test-model", 11, 4)


def test_a_client_that_leaves_midway_ends_the_trace_marked_as_such(api, find_traces):
    events = events_of(stream(api, headers={"X-Request-ID": "leaver"}), stop_after=4)
    assert [k for k, _ in events] == ["start", "token", "token", "token"]

    turn = Turn.objects.get()
    assert turn.status == Turn.Status.FAILED and "ClientDisconnected" in turn.error
    (trace,) = find_traces("attributes.client_request_id = 'leaver'")
    assert trace.info.state == "ERROR"
    assert trace.info.tags["client_disconnected"] == "true"
    partial = "".join(d["text"] for k, d in events if k == "token")
    assert trace.info.response_preview == partial

    # The same X-Request-ID retries that turn: no second turn.
    retry = events_of(stream(api, headers={"X-Request-ID": "leaver"}))
    assert retry[-1][0] == "done"
    assert Turn.objects.count() == 1 and Turn.objects.get().status == "completed"


def test_an_llm_failure_mid_stream_is_an_error_event_and_an_error_trace(
    api, llm_server, find_traces
):
    llm_server.mode = "error"
    events = events_of(stream(api, headers={"X-Request-ID": "stream-fail"}))
    assert events[-1] == (
        "error",
        {"error": "llm_unavailable", "detail": "The language model answered with HTTP 500."},
    )
    (trace,) = find_traces("attributes.client_request_id = 'stream-fail'")
    assert trace.info.state == "ERROR"


def test_a_replayed_stream_makes_no_second_trace(api, find_traces):
    first = events_of(stream(api, headers={"X-Request-ID": "again"}))
    second = events_of(stream(api, headers={"X-Request-ID": "again"}))
    assert second[-1][1]["replayed"] is True
    assert second[-1][1]["response"] == first[-1][1]["response"]
    assert len(find_traces("attributes.client_request_id = 'again'")) == 1


def test_bad_input_with_accept_event_stream_is_still_a_400(api):
    response = api.post(
        "/api/chat/", {"message": ""}, format="json", headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 400
    assert b"event: error" in response.content


def test_a_client_gone_right_after_the_start_event_leaves_no_pending_turn(api):
    events = events_of(stream(api, headers={"X-Request-ID": "gone-early"}), stop_after=1)
    assert [k for k, _ in events] == ["start"]
    assert Turn.objects.get().status == Turn.Status.FAILED
