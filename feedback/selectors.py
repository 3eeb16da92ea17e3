"""Reads, scoped to the person asking: someone else's turn or feedback does not exist (404)."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from chat.models import Message, Turn
from feedback.models import Feedback


def turn_by_request_id(*, user: AbstractBaseUser, client_request_id: str) -> Turn:
    """Raises: Http404."""
    return get_object_or_404(Turn, user=user, client_request_id=client_request_id)


def turn_by_reply_message(*, user: AbstractBaseUser, message_id: int) -> Turn:
    """The turn whose answer is `message_id`, in one of the user's sessions. Raises: Http404."""
    message = get_object_or_404(
        Message.objects.select_related("turn"),
        pk=message_id,
        role=Message.Role.ASSISTANT,
        session__owner=user,
    )
    return message.turn


def feedback_get(*, user: AbstractBaseUser, turn: Turn) -> Feedback:
    """Raises: Http404 when the user has no (unwithdrawn) feedback on the turn."""
    return get_object_or_404(Feedback, user=user, turn=turn, withdrawn=False)


def reply_message_id(*, turn: Turn) -> int | None:
    return (
        turn.messages.filter(role=Message.Role.ASSISTANT)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


def feedback_due_ids(*, now: datetime, limit: int) -> list[int]:
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return list(
        Feedback.objects.filter(due, delivery_state=Feedback.Delivery.PENDING)
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )


def feedback_pending() -> QuerySet[Feedback]:
    return Feedback.objects.filter(delivery_state=Feedback.Delivery.PENDING)
