"""Reads. Every selector is scoped to its owner: someone else's objects do not exist (404)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from chat.llm import ChatMessage
from chat.models import ChatSession, Message, Turn


def session_list(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    return ChatSession.objects.filter(owner=user, deleted_at__isnull=True).order_by(
        "-updated_at", "-created_at"
    )


def session_get(*, user: AbstractBaseUser, session_id) -> ChatSession:
    """Raises: Http404 for a session that is not the user's."""
    return get_object_or_404(ChatSession, owner=user, pk=session_id, deleted_at__isnull=True)


def session_messages(*, session: ChatSession) -> QuerySet[Message]:
    return session.messages.select_related("turn").order_by("created_at", "id")


def turn_get_by_request_id(*, user: AbstractBaseUser, client_request_id: str) -> Turn | None:
    return (
        Turn.objects.filter(user=user, client_request_id=client_request_id)
        .select_related("session")
        .first()
    )


def turn_reply(*, turn: Turn) -> Message | None:
    return turn.messages.filter(role=Message.Role.ASSISTANT).order_by("-id").first()


def history_for_llm(*, session: ChatSession, before: Turn, max_turns: int) -> list[ChatMessage]:
    """The last `max_turns` completed turns before `before`, oldest first."""
    turn_ids = list(
        session.turns.filter(status=Turn.Status.COMPLETED, id__lt=before.id)
        .order_by("-id")
        .values_list("id", flat=True)[:max_turns]
    )
    messages = Message.objects.filter(turn_id__in=turn_ids).order_by("turn_id", "id")
    return [ChatMessage(role=m.role, content=m.content) for m in messages]


def user_id_for(value: str) -> int | None:
    """A user's id from an id or a username; None when there is no such user."""
    users = get_user_model().objects
    by_name = users.filter(username=value).values_list("pk", flat=True).first()
    if by_name is not None or not (value.isascii() and value.isdecimal()):
        return by_name
    return users.filter(pk=int(value)).values_list("pk", flat=True).first()
