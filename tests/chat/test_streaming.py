import json

import pytest
from mlflow.tracing.constant import TraceMetadataKey

from chat.models import Turn
from tests.asgi import asgi_post

pytestmark = pytest.mark.django_db


def events_of(response) -> list[tuple[str, dict]]:
    """Parse a streamed answer's server-sent events."""
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = []
    for raw in b"".join(response).decode().split("\n\n"):
        if raw and not raw.startswith(":"):
            kind, data = raw.split("\n", 1)
            events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
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


def test_a_client_that_leaves_midway_cancels_the_turn_and_marks_its_trace(
    token, settings, find_traces
):
    settings.LLM_LOCAL_TOKEN_DELAY_MS = 20
    left = asgi_post(
        "/api/chat/",
        {"message": "Tell me about streaming", "stream": True},
        token=token,
        headers={"x-request-id": "leaver"},
        leave_after_events=4,
    )
    events = left.events()
    assert [k for k, _ in events][:4] == ["start", "token", "token", "token"]
    assert "done" not in [k for k, _ in events]

    turn = Turn.objects.get()
    assert turn.status == Turn.Status.CANCELLED and "ClientDisconnected" in turn.error
    sent = "".join(d["text"] for k, d in events if k == "token")
    # What the model had generated when the client left: at least what the client got.
    assert turn.partial_response.startswith(sent) and turn.partial_response
    (trace,) = find_traces("attributes.client_request_id = 'leaver'")
    assert trace.info.state == "ERROR"
    assert trace.info.tags["client_disconnected"] == "true"
    assert trace.info.response_preview == turn.partial_response

    # The same X-Request-ID asks again: no second turn.
    retry = asgi_post(
        "/api/chat/",
        {"message": "Tell me about streaming", "stream": True},
        token=token,
        headers={"x-request-id": "leaver"},
    )
    assert retry.events()[-1][0] == "done"
    turn.refresh_from_db()
    assert Turn.objects.count() == 1 and turn.status == "completed"
    assert turn.partial_response == "" and turn.attempts == 2


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


def test_an_error_event_from_the_model_mid_stream_fails_the_turn_after_its_pieces(
    api, llm_server, find_traces
):
    llm_server.mode = "broken_stream"
    events = events_of(stream(api, "one two three", headers={"X-Request-ID": "stream-broken"}))
    assert [d["text"] for k, d in events if k == "token"] == ["echo[2]: ", "one "]
    assert events[-1] == (
        "error",
        {
            "error": "llm_unavailable",
            "detail": "The language model reported an error mid-stream.",
        },
    )
    assert Turn.objects.get().status == Turn.Status.FAILED
    (trace,) = find_traces("attributes.client_request_id = 'stream-broken'")
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


def test_a_client_gone_right_after_the_start_event_leaves_no_pending_turn(token, settings):
    settings.LLM_LOCAL_TOKEN_DELAY_MS = 50
    left = asgi_post(
        "/api/chat/",
        {"message": "hello there", "stream": True},
        token=token,
        leave_after_events=1,
    )
    assert [k for k, _ in left.events()] == ["start"]
    assert Turn.objects.get().status == Turn.Status.CANCELLED


def test_a_silent_model_gets_keepalive_comments_in_the_stream(token, settings):
    settings.LLM_LOCAL_TOKEN_DELAY_MS = 150
    settings.CHAT_STREAM_KEEPALIVE_S = 0.05
    response = asgi_post("/api/chat/", {"message": "slow words", "stream": True}, token=token)
    kinds = [k for k, _ in response.events()]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("comment") >= 2
    assert b": keepalive\n\n" in response.body
