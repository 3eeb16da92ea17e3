import json

import pytest
from mlflow.tracing.constant import TraceMetadataKey

from chat.models import ChatSession, Message, Turn

pytestmark = pytest.mark.django_db


def chat(api, message="How do I reset my password?", *, url="/api/chat/", headers=None, **body):
    return api.post(url, {"message": message, **body}, format="json", headers=headers or {})


def test_turn_is_one_trace_with_who_where_which_request_and_deployment(
    api, user, settings, get_trace
):
    settings.APP_ENVIRONMENT = "production"
    settings.APP_VERSION = "1.4.2"
    settings.DEPLOYMENT_ID = "deploy-77"
    settings.REGION = "eu-west-1"
    settings.TRACE_TAGS = {"team": "support", "tier": "free"}

    response = chat(api, headers={"X-Request-ID": "req-abc-123"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert response["X-Request-ID"] == "req-abc-123"
    assert body["client_request_id"] == "req-abc-123"
    turn = Turn.objects.get()
    assert body["trace_id"] == turn.trace_id != ""
    assert body["message_id"] == Message.objects.get(role="assistant").id
    assert body["trace_url"].endswith(f"selectedEvaluationId={turn.trace_id}")

    trace = get_trace(body["trace_id"])
    info = trace.info
    assert info.state == "OK"
    assert info.client_request_id == "req-abc-123"
    assert info.trace_metadata[TraceMetadataKey.TRACE_USER] == str(user.id)
    assert info.trace_metadata[TraceMetadataKey.TRACE_SESSION] == body["session_id"]
    for key, value in {
        "mlflow.source.type": "production",
        "environment": "production",
        "app_version": "1.4.2",
        "deployment_id": "deploy-77",
        "region": "eu-west-1",
    }.items():
        assert info.trace_metadata[key] == value
    assert info.tags["team"] == "support"
    assert info.tags["tier"] == "free"
    assert info.tags["endpoint"] == "api_chat"
    assert info.request_preview == "How do I reset my password?"
    assert info.response_preview == body["response"]

    spans = {span.name: span for span in trace.data.spans}
    assert set(spans) == {"chat_turn", "load_history", "llm"}
    assert spans["llm"].span_type == "CHAT_MODEL"
    assert spans["llm"].parent_id == spans["chat_turn"].span_id
    # The turn's trace covers the turn from its claim: the question stored, the history read
    # with it (one unit of ORM work), then the model.
    root, history, llm = spans["chat_turn"], spans["load_history"], spans["llm"]
    assert history.parent_id == root.span_id
    assert root.start_time_ns <= history.start_time_ns <= history.end_time_ns
    assert history.end_time_ns <= llm.start_time_ns <= llm.end_time_ns <= root.end_time_ns
    assert root.start_time_ns <= int(turn.started_at.timestamp() * 1e9) + 1_000_000
    assert spans["llm"].inputs["messages"][-1] == {
        "role": "user",
        "content": "How do I reset my password?",
    }
    assert spans["llm"].outputs["choices"][0]["message"]["content"] == body["response"]
    assert spans["chat_turn"].inputs["messages"] == [
        {"role": "user", "content": "How do I reset my password?"}
    ]
    assert spans["chat_turn"].inputs["session_id"] == body["session_id"]
    assert info.token_usage == {
        "input_tokens": turn.prompt_tokens,
        "output_tokens": turn.completion_tokens,
        "total_tokens": turn.total_tokens,
    }
    assert turn.prompt_tokens > 0 and turn.completion_tokens > 0
    assert turn.latency_ms is not None and turn.model == "local-responder"


def test_second_turn_shares_the_mlflow_session_and_its_llm_call_sees_the_first(
    api, find_traces, get_trace
):
    first = chat(api, "My order 1234 never arrived").json()
    second = chat(api, "What did I just tell you?", session_id=first["session_id"]).json()

    assert second["session_id"] == first["session_id"]
    session_filter = f"metadata.`mlflow.trace.session` = '{first['session_id']}'"
    assert {t.info.trace_id for t in find_traces(session_filter)} == {
        first["trace_id"],
        second["trace_id"],
    }
    llm_span = next(s for s in get_trace(second["trace_id"]).data.spans if s.name == "llm")
    sent = llm_span.inputs["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "My order 1234 never arrived"
    assert sent[2]["content"] == first["response"]
    assert "My order 1234 never arrived" in second["response"]  # the local responder remembers


def test_x_session_id_header_continues_the_conversation(api):
    first = chat(api, "hello").json()
    second = chat(api, "again", headers={"X-Session-ID": first["session_id"]}).json()
    assert second["session_id"] == first["session_id"]
    assert ChatSession.objects.count() == 1


def test_replayed_request_id_returns_the_stored_reply_without_a_second_llm_call_or_trace(
    api, llm_server, find_traces
):
    first = chat(api, "hi there", headers={"X-Request-ID": "same-id"})
    again = chat(api, "hi there", headers={"X-Request-ID": "same-id"})

    assert again.status_code == 200
    assert again.json()["response"] == first.json()["response"]
    assert again.json()["trace_id"] == first.json()["trace_id"]
    assert again.json()["replayed"] is True and first.json()["replayed"] is False
    assert len(llm_server.chat_requests()) == 1
    assert len(find_traces("attributes.client_request_id = 'same-id'")) == 1
    assert Turn.objects.count() == 1 and Message.objects.count() == 2


def test_request_id_reused_for_another_message_is_409_and_changes_nothing(api):
    chat(api, "first question", headers={"X-Request-ID": "dup-1"})
    response = chat(api, "a different question", headers={"X-Request-ID": "dup-1"})
    assert response.status_code == 409
    assert response.json()["error"] == "request_id_conflict"
    assert Message.objects.count() == 2


def test_same_request_id_from_two_users_is_two_turns(api, other_api):
    assert chat(api, "q", headers={"X-Request-ID": "shared"}).status_code == 200
    assert chat(other_api, "q", headers={"X-Request-ID": "shared"}).status_code == 200
    assert Turn.objects.count() == 2


def test_forged_x_user_id_changes_nothing(api, user, other_user, get_trace):
    body = chat(api, headers={"X-User-ID": str(other_user.id)}).json()
    trace = get_trace(body["trace_id"])
    assert trace.info.trace_metadata[TraceMetadataKey.TRACE_USER] == str(user.id)
    assert Turn.objects.get().user == user
    assert ChatSession.objects.get().owner == user


def test_a_request_id_is_generated_and_echoed_when_the_client_sends_none(api, get_trace):
    response = chat(api)
    generated = response["X-Request-ID"]
    assert generated.startswith("req-") and len(generated) <= 50
    assert response.json()["client_request_id"] == generated
    assert get_trace(response.json()["trace_id"]).info.client_request_id == generated


def test_seed_endpoint_answers_the_seed_body_with_a_token(api, get_trace):
    response = api.post(
        "/chat",
        data=json.dumps({"message": "Hello from the seed"}),
        content_type="application/json",
        headers={"X-Request-ID": "seed-1"},
    )
    assert response.status_code == 200
    body = response.json()
    assert "Hello from the seed" in body["response"]
    assert get_trace(body["trace_id"]).info.tags["endpoint"] == "seed_chat"


@pytest.mark.parametrize(
    ("payload", "headers", "field"),
    [
        ({"message": ""}, {}, "message"),
        ({"message": "   "}, {}, "message"),
        ({"message": "x" * 101}, {}, "message"),
        ({}, {}, "message"),
        ({"message": ["not", "text"]}, {}, "message"),
        ({"message": True}, {}, "message"),
        ({"message": "hi", "session_id": "not-a-uuid"}, {}, "session_id"),
        ({"message": "hi", "temperature": 2}, {}, "temperature"),
        ({"message": "hi"}, {"X-Request-ID": "x" * 51}, "X-Request-ID"),
        ({"message": "hi"}, {"X-Request-ID": "has space"}, "X-Request-ID"),
        ({"message": "hi"}, {"X-Request-ID": "quote'id"}, "X-Request-ID"),
        ({"message": "hi"}, {"X-Request-ID": ""}, "X-Request-ID"),
        ({"message": "hi"}, {"X-Session-ID": "nope"}, "X-Session-ID"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    api, settings, find_traces, payload, headers, field
):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    response = api.post("/api/chat/", payload, format="json", headers=headers)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid"
    assert field in body["fields"]
    assert Turn.objects.count() == 0 and ChatSession.objects.count() == 0
    assert find_traces() == []


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"just a string"'])
def test_a_body_that_is_not_a_json_object_is_a_400(api, raw):
    response = api.post("/api/chat/", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] in {"parse_error", "invalid"}
    assert Turn.objects.count() == 0


def test_a_body_that_is_not_json_at_all_is_a_415(api):
    response = api.post("/api/chat/", data="message=hi", content_type="text/plain")
    assert response.status_code == 415
    assert Turn.objects.count() == 0


def test_someone_elses_session_is_404_and_changes_nothing(api, other_api, find_traces):
    theirs = chat(other_api, "my private conversation").json()
    response = chat(api, "let me in", session_id=theirs["session_id"])
    assert response.status_code == 404
    assert Turn.objects.count() == 1
    assert len(find_traces()) == 1


def test_a_session_that_does_not_exist_is_404(api):
    response = chat(api, session_id="00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_no_credentials_is_401(db, client):
    response = client.post("/api/chat/", {"message": "hi"}, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert Turn.objects.count() == 0


def test_credentials_are_checked_before_the_body(db, client):
    # The claim runs in the unit that authenticates (ChatApi.prepare_post): DRF's order holds.
    response = client.post("/api/chat/", {"message": ""}, content_type="application/json")
    assert response.status_code == 401
    assert Turn.objects.count() == 0


def test_a_wrong_token_is_401(db, client):
    response = client.post(
        "/api/chat/",
        {"message": "hi"},
        content_type="application/json",
        headers={"Authorization": "Token not-a-real-token"},
    )
    assert response.status_code == 401
