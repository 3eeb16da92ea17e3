"""Build state directly in the database: no HTTP, no LLM, no MLflow."""

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from chat.models import ChatSession, Message, Turn
from feedback.models import Feedback


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-123")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class SessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChatSession

    owner = factory.SubFactory(UserFactory)
    title = factory.Sequence(lambda n: f"Conversation {n}")


class TurnFactory(factory.django.DjangoModelFactory):
    """A completed turn by the session's owner (no messages: see `answered_turn`)."""

    class Meta:
        model = Turn

    session = factory.SubFactory(SessionFactory)
    user = factory.SelfAttribute("session.owner")
    client_request_id = factory.Sequence(lambda n: f"req-{n}")
    status = Turn.Status.COMPLETED
    model = "local-responder"
    environment = "development"
    app_version = "0.1.0"
    attempts = 1
    prompt_tokens = 10
    completion_tokens = 20
    latency_ms = 5
    started_at = factory.LazyFunction(timezone.now)
    completed_at = factory.LazyFunction(timezone.now)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    turn = factory.SubFactory(TurnFactory)
    session = factory.SelfAttribute("turn.session")
    role = Message.Role.USER
    content = factory.Sequence(lambda n: f"Question {n}?")


class FeedbackFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Feedback

    turn = factory.SubFactory(TurnFactory)
    user = factory.SelfAttribute("turn.user")
    is_correct = True


def answered_turn(*, question: str = "Is my refund processed?", answer: str = "Yes.", **fields):
    """A turn with its question and answer messages; returns (turn, answer message)."""
    turn = TurnFactory(**fields)
    MessageFactory(turn=turn, role=Message.Role.USER, content=question)
    return turn, MessageFactory(turn=turn, role=Message.Role.ASSISTANT, content=answer)
