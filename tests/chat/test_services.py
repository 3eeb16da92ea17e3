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
