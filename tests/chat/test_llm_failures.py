import pytest

from chat.models import Turn

pytestmark = pytest.mark.django_db


def test_the_openai_compatible_backend_is_used_with_history_and_usage(api, llm_server):
    first = api.post("/api/chat/", {"message": "one"}, format="json").json()
    second = api.post(
        "/api/chat/", {"message": "two", "session_id": first["session_id"]}, format="json"
    ).json()

    assert first["response"] == "echo[2]: one"
    assert second["response"] == "echo[4]: two"
    sent = llm_server.chat_requests()[-1]
    assert sent["model"] == "test-model"
    assert [m["content"] for m in sent["messages"][1:]] == ["one", "echo[2]: one", "two"]
    turn = Turn.objects.get(client_request_id=second["client_request_id"])
    assert (turn.model, turn.prompt_tokens, turn.completion_tokens) == ("test-model", 11, 7)


def test_an_llm_error_is_a_502_json_and_the_trace_is_marked_error(api, llm_server, get_trace):
    llm_server.mode = "error"
    response = api.post(
        "/api/chat/", {"message": "hi"}, format="json", headers={"X-Request-ID": "fails-1"}
    )
    assert response.status_code == 502
    assert response.json()["error"] == "llm_unavailable"
    turn = Turn.objects.get()
    assert turn.status == Turn.Status.FAILED and "LLMUnavailable" in turn.error
    trace = get_trace(turn.trace_id)
    assert trace.info.state == "ERROR"
    assert trace.info.client_request_id == "fails-1"
    llm_span = next(s for s in trace.data.spans if s.name == "llm")
    assert llm_span.status.status_code == "ERROR"


def test_an_llm_timeout_is_a_504_json(api, llm_server, settings, get_trace):
    llm_server.mode = "slow"
    llm_server.slow_seconds = 2.0
    settings.LLM_TIMEOUT_S = 0.3
    response = api.post("/api/chat/", {"message": "hi"}, format="json")
    assert response.status_code == 504
    assert response.json()["error"] == "llm_timeout"
    assert get_trace(Turn.objects.get().trace_id).info.state == "ERROR"


def test_retrying_a_failed_turn_with_its_request_id_answers_it_without_a_second_turn(
    api, llm_server, find_traces
):
    llm_server.mode = "error"
    headers = {"X-Request-ID": "retry-me"}
    assert (
        api.post("/api/chat/", {"message": "hi"}, format="json", headers=headers).status_code == 502
    )
    llm_server.mode = "ok"
    retry = api.post("/api/chat/", {"message": "hi"}, format="json", headers=headers)

    assert retry.status_code == 200
    assert retry.json()["response"] == "echo[2]: hi"
    turn = Turn.objects.get()
    assert (turn.status, turn.attempts, turn.messages.count()) == ("completed", 2, 2)
    states = sorted(t.info.state for t in find_traces("attributes.client_request_id = 'retry-me'"))
    assert states == ["ERROR", "OK"]


def test_a_failed_turn_is_left_out_of_the_next_turns_history(api, llm_server):
    llm_server.mode = "error"
    failed = api.post("/api/chat/", {"message": "lost"}, format="json")
    assert failed.status_code == 502
    session_id = Turn.objects.get().session_id
    llm_server.mode = "ok"
    api.post("/api/chat/", {"message": "next", "session_id": str(session_id)}, format="json")
    sent = llm_server.chat_requests()[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == ["next"]
