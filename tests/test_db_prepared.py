"""chatproject.db.prepared: the chat path's writes store exactly what the ORM's would."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models.signals import post_save, pre_save
from django.forms.models import model_to_dict
from django.utils import timezone

from chat.models import ChatSession, Message, Turn
from chatproject.db import prepared

pytestmark = pytest.mark.django_db


def _row(instance, *skip: str) -> dict:
    row = model_to_dict(type(instance).objects.get(pk=instance.pk))
    return {name: value for name, value in row.items() if name not in {"id", *skip}}


def test_inserted_rows_are_the_rows_create_writes(user):
    stamps = ("created_at", "updated_at")
    session = prepared.insert(ChatSession(owner=user, title="é ✓"))
    created_session = ChatSession.objects.create(owner=user, title="é ✓")
    assert _row(session, *stamps) == _row(created_session, *stamps)
    assert ChatSession.objects.get(pk=session.pk).created_at is not None  # auto_now_add ran

    fields = {
        "user": user,
        "endpoint": "chat",
        "environment": "test",
        "app_version": "1.2.3",
        "attempts": 1,
        "started_at": timezone.now(),
    }
    turn = prepared.insert(Turn(session=session, client_request_id="p-1", **fields))
    created_turn = Turn.objects.create(session=session, client_request_id="p-2", **fields)
    assert isinstance(turn.pk, int) and turn.pk != created_turn.pk
    assert not turn._state.adding and turn._state.db == "default"
    assert {**_row(turn, "created_at"), "client_request_id": None} == {
        **_row(created_turn, "created_at"),
        "client_request_id": None,
    }

    # A related object saved in the same transaction: its id is read when the row is written.
    unsaved_turn = Turn(session=session, client_request_id="p-3", **fields)
    message = Message(session=session, turn=unsaved_turn, role="user", content="hi")
    with transaction.atomic():
        prepared.insert(unsaved_turn)
        prepared.insert(message)
    created_message = Message.objects.create(
        session=session, turn=unsaved_turn, role="user", content="hi"
    )
    assert message.turn_id == unsaved_turn.pk
    assert _row(message, "created_at") == _row(created_message, "created_at")
    assert list(unsaved_turn.messages.values_list("pk", flat=True)) == [
        message.pk,
        created_message.pk,
    ]


def test_an_insert_is_refused_as_create_refuses_it(user):
    session = prepared.insert(ChatSession(owner=user))
    turn = Turn(session=session, user=user, client_request_id="dup", attempts=1)
    prepared.insert(turn)
    with pytest.raises(IntegrityError), transaction.atomic():
        prepared.insert(Turn(session=session, user=user, client_request_id="dup", attempts=1))
    with pytest.raises(ValueError, match="unsaved related object"):
        prepared.insert(Message(session=session, turn=Turn(session=session), role="user"))
    assert Turn.objects.filter(client_request_id="dup").count() == 1


def test_update_is_filter_update_for_equality_conditions(user):
    session = prepared.insert(ChatSession(owner=user))
    turn = prepared.insert(
        Turn(session=session, user=user, client_request_id="u-1", attempts=2, status="pending")
    )
    later = timezone.now() + timedelta(minutes=5)
    where = {"id": turn.pk, "attempts": 2, "status": "pending"}
    values = {"status": "completed", "model": "m", "latency_ms": 12, "completed_at": later}

    assert prepared.update(Turn, where=where, values=values) == 1
    stored = Turn.objects.get(pk=turn.pk)
    assert (stored.status, stored.model, stored.latency_ms, stored.completed_at) == (
        "completed",
        "m",
        12,
        later,
    )
    # The condition no longer holds (the turn is completed): nothing is written, as filter()
    # .update() would write nothing.
    assert prepared.update(Turn, where=where, values={"model": "other"}) == 0
    assert Turn.objects.filter(**where).update(model="other") == 0
    assert Turn.objects.get(pk=turn.pk).model == "m"
    with pytest.raises(TypeError, match="own columns"):
        prepared.update(Turn, where={"id": turn.pk}, values={"messages": None})


@pytest.mark.parametrize("model", [ChatSession, Turn, Message])
def test_no_save_signal_receiver_is_skipped(model):
    # prepared.insert() sends no pre_save/post_save: a receiver connected for these models
    # would silently miss the chat path's rows. Connect one, and this fails: write those rows
    # with the ORM instead.
    assert not pre_save.has_listeners(model) and not post_save.has_listeners(model)
