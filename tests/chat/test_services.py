from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync

from chat import services
from chat.exceptions import RequestIdConflict
from chat.models import Message, Turn

pytestmark = pytest.mark.django_db


def test_an_attempt_overtaken_by_a_retry_writes_nothing(user):
    first = services.turn_begin(user=user, message="slow one", client_request_id="r-1")
    # The first attempt looks abandoned (no progress for long), so a retry claims the turn.
    Turn.objects.filter(pk=first.turn.pk).update(
        started_at=first.turn.started_at - timedelta(hours=1)
    )
    retry = services.turn_begin(user=user, message="slow one", client_request_id="r-1")
    assert retry.turn.pk == first.turn.pk and retry.turn.attempts == 2 and retry.replay is None

    with pytest.raises(RequestIdConflict):
        async_to_sync(services.turn_answer)(first)
    assert Message.objects.filter(role="assistant").count() == 0

    result = async_to_sync(services.turn_answer)(retry)
    assert result.turn.status == "completed"
    assert Message.objects.filter(role="assistant").count() == 1


def test_a_queued_trace_row_is_the_row_create_would_write(user):
    from django.db import IntegrityError, transaction
    from django.forms.models import model_to_dict

    from chat.models import TraceExport
    from tests.factories import TurnFactory

    turn = TurnFactory(user=user)
    payload = {"v": 1, "trace_id": "tr-a", "spans": [{"name": "chat_turn", "inputs": "é ✓"}]}
    payload["spans"][0]["parent_id"] = 2**64 - 1  # a caller's span id: orjson's largest int
    TraceExport.objects.enqueue(turn_id=turn.pk, trace_id="tr-a", payload=payload)
    TraceExport.objects.create(turn=turn, trace_id="tr-b", payload=payload)

    queued, created = TraceExport.objects.order_by("id")
    assert {**model_to_dict(queued), "id": None, "trace_id": None} == {
        **model_to_dict(created),
        "id": None,
        "trace_id": None,
    }
    assert queued.state == TraceExport.State.PENDING and queued.payload == payload
    assert abs(queued.created_at - created.created_at).total_seconds() < 5
    # Due at once, as the deliverer's query sees it.
    assert TraceExport.objects.filter(trace_id="tr-a", next_attempt_at__isnull=True).exists()
    # Past orjson's range, the standard encoder takes over.
    wide = {**payload, "trace_id": "tr-c", "big": 2**70}
    TraceExport.objects.enqueue(turn_id=turn.pk, trace_id="tr-c", payload=wide)
    assert TraceExport.objects.get(trace_id="tr-c").payload == wide
    # A trace id already queued is refused as create() refuses it (the caller-trace fallback).
    with pytest.raises(IntegrityError), transaction.atomic():
        TraceExport.objects.enqueue(turn_id=turn.pk, trace_id="tr-a", payload=payload)


def test_a_new_conversations_first_turn_is_claimed_with_inserts_only(user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        claim = services.turn_begin(user=user, message="hello", client_request_id="first-1")

    # Nothing is read back: the request id is new to the unique constraint, and a conversation
    # that starts with this turn has no history.
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert not [sql for sql in reads if "chat_turn" in sql or "chat_message" in sql], reads
    assert claim.history.messages == [] and claim.new_conversation
    assert claim.turn.session.title == "hello" and claim.question_id is not None


def test_a_retried_request_id_is_replayed_even_in_a_deleted_conversation(api):
    first = api.post(
        "/api/chat/", {"message": "hi"}, format="json", headers={"X-Request-ID": "d-1"}
    )
    session_id = first.json()["session_id"]
    assert api.delete(f"/api/sessions/{session_id}/").status_code == 204

    again = api.post(
        "/api/chat/",
        {"message": "hi", "session_id": session_id},
        format="json",
        headers={"X-Request-ID": "d-1"},
    )
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["message_id"] == first.json()["message_id"]
    # A new request id in the deleted conversation is still refused.
    new = api.post("/api/chat/", {"message": "hi", "session_id": session_id}, format="json")
    assert new.status_code == 404
    assert Turn.objects.count() == 1


def test_the_history_is_the_last_completed_turns_oldest_first_in_one_query(
    api, user, django_assert_num_queries
):
    from chat import selectors

    session_id = None
    for n in range(4):
        body = {"message": f"question {n}"} | ({"session_id": session_id} if session_id else {})
        session_id = api.post("/api/chat/", body, format="json").json()["session_id"]
    Turn.objects.filter(messages__content="question 2").update(status=Turn.Status.FAILED)
    claim = services.turn_begin(user=user, message="next", session_id=session_id)

    with django_assert_num_queries(1):
        history = selectors.history_for_llm(
            session=claim.turn.session, before=claim.turn, max_turns=2
        )
    # The last two completed turns (question 2 failed), question then answer, oldest first.
    assert [(m.role, m.content[:10]) for m in history] == [
        ("user", "question 1"),
        ("assistant", "You asked:"),
        ("user", "question 3"),
        ("assistant", "You asked:"),
    ]
    # The claim read it too, with the setting's longer window.
    questions = [m.content for m in claim.history.messages if m.role == "user"]
    assert questions == ["question 0", "question 1", "question 3"]
    assert not claim.new_conversation
