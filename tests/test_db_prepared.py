"""chatproject.db.prepared: the chat path's writes store exactly what the ORM's would, and its
reads return what the ORM's would."""

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


def _session_read(params=lambda connection, owner_id, title: (owner_id, title)):
    return prepared.Read(
        ChatSession,
        lambda owner_id, title: ChatSession.objects.filter(owner_id=owner_id, title=title),
        params,
    )


def test_a_read_returns_the_instances_and_rows_the_orm_returns(user, other_user):
    mine = ChatSession.objects.create(owner=user, title="é ✓")
    ChatSession.objects.filter(pk=mine.pk).update(deleted_at=timezone.now())
    ChatSession.objects.create(owner=other_user, title="é ✓")
    read = _session_read()

    (found,) = read.instances(user.pk, "é ✓")
    orm = ChatSession.objects.get(pk=mine.pk)
    # Every field as the ORM gives it: the UUID, aware datetimes (converted from SQLite's text).
    assert model_to_dict(found) == model_to_dict(orm)
    assert [found.created_at, found.updated_at, found.deleted_at] == [
        orm.created_at,
        orm.updated_at,
        orm.deleted_at,
    ]
    assert found.deleted_at.tzinfo is not None and found._state.db == "default"
    assert not found._state.adding
    assert read.instances(user.pk, "other title") == []
    assert read.instances(other_user.pk, "é ✓")[0].owner_id == other_user.pk

    history = prepared.Read(
        Turn,
        lambda session_id, *, limit: (
            Turn.objects.filter(session_id=session_id)
            .order_by("id")
            .values_list("client_request_id", "created_at")[:limit]
        ),
        lambda connection, session_id: (
            ChatSession._meta.pk.get_db_prep_value(session_id, connection, prepared=False),
        ),
    )
    for n in range(3):
        Turn.objects.create(session=mine, user=user, client_request_id=f"r-{n}")
    # Each shape (here the slice's bound, written into the SQL) is its own statement.
    for limit in (1, 3):
        orm_rows = list(
            Turn.objects.filter(session=mine)
            .order_by("id")
            .values_list("client_request_id", "created_at")[:limit]
        )
        assert history.rows(mine.pk, limit=limit) == orm_rows
        assert history.rows(str(mine.pk), limit=limit) == orm_rows  # prepared as the ORM does
    with pytest.raises(TypeError, match="selects no instances"):
        history.instances(mine.pk, limit=1)


def test_a_read_whose_params_are_not_the_orms_refuses_to_run(user, django_assert_num_queries):
    ChatSession.objects.create(owner=user, title="t")
    swapped = _session_read(params=lambda connection, owner_id, title: (title, owner_id))
    with django_assert_num_queries(0), pytest.raises(ValueError, match="the ORM binds"):
        swapped.instances(user.pk, "t")


def test_a_read_runs_one_query_and_builds_no_queryset_after_its_first(
    user, django_assert_num_queries, monkeypatch
):
    read = _session_read()
    ChatSession.objects.create(owner=user, title="t")
    assert len(read.instances(user.pk, "t")) == 1
    monkeypatch.setattr(ChatSession.objects, "filter", None)  # building one would now fail
    with django_assert_num_queries(1):
        assert len(read.instances(user.pk, "t")) == 1
