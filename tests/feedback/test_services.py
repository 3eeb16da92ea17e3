"""Feedback services on state built directly in the database (no HTTP, no LLM, no MLflow)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Turn
from feedback import selectors, services
from feedback.exceptions import TurnNotRateable
from feedback.models import Feedback
from tests.factories import FeedbackFactory, TurnFactory, answered_turn

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("status", [Turn.Status.FAILED, Turn.Status.PENDING])
def test_a_turn_without_an_answer_cannot_be_rated(status):
    turn = TurnFactory(status=status)
    with pytest.raises(TurnNotRateable):
        services.feedback_submit(user=turn.user, turn=turn, is_correct=True)
    assert not Feedback.objects.exists()


def test_a_first_vote_is_stored_pending_delivery():
    turn, _ = answered_turn()
    feedback, created = services.feedback_submit(user=turn.user, turn=turn, rating=4, comment="ok")
    assert created
    assert (feedback.name, feedback.value, feedback.version) == ("user_rating", 4, 1)
    assert feedback.delivery_state == Feedback.Delivery.PENDING


def test_a_changed_vote_is_a_new_version_queued_again_from_scratch():
    feedback = FeedbackFactory(
        delivery_state=Feedback.Delivery.FAILED, attempts=7, last_error="TrackingUnavailable: x"
    )
    changed, created = services.feedback_submit(
        user=feedback.user, turn=feedback.turn, is_correct=False
    )
    assert not created and changed.pk == feedback.pk
    assert (changed.version, changed.attempts, changed.last_error) == (2, 0, "")
    assert changed.delivery_state == Feedback.Delivery.PENDING and changed.is_correct is False


def test_a_staff_label_keeps_the_stored_expected_response_unless_given():
    feedback = FeedbackFactory(expected_response="The right answer")
    kept, _ = services.feedback_submit(user=feedback.user, turn=feedback.turn, is_correct=True)
    assert kept.expected_response == "The right answer"
    cleared, _ = services.feedback_submit(
        user=feedback.user, turn=feedback.turn, is_correct=True, expected_response=""
    )
    assert cleared.expected_response == ""


def test_withdrawing_keeps_the_row_so_mlflow_can_be_told():
    feedback = FeedbackFactory(delivery_state=Feedback.Delivery.DELIVERED)
    services.feedback_withdraw(feedback=feedback)
    feedback.refresh_from_db()
    assert feedback.withdrawn and feedback.delivery_state == Feedback.Delivery.PENDING
    assert selectors.feedback_of(user=feedback.user, turn=feedback.turn) is None


def test_retry_failed_re_queues_only_failed_rows():
    failed = FeedbackFactory(delivery_state=Feedback.Delivery.FAILED, attempts=80)
    delivered = FeedbackFactory(delivery_state=Feedback.Delivery.DELIVERED)
    assert services.feedback_retry_failed() == 1
    failed.refresh_from_db()
    delivered.refresh_from_db()
    assert (failed.delivery_state, failed.attempts) == (Feedback.Delivery.PENDING, 0)
    assert delivered.delivery_state == Feedback.Delivery.DELIVERED


def test_feedback_on_an_untraced_turn_fails_for_good_with_the_reason():
    turn, _ = answered_turn(trace_id="")
    feedback, _ = services.feedback_submit(user=turn.user, turn=turn, is_correct=True)
    assert services.feedback_deliver(feedback_id=feedback.pk) == Feedback.Delivery.FAILED
    feedback.refresh_from_db()
    assert "no MLflow trace" in feedback.last_error


def test_a_leased_row_is_not_claimed_again():
    feedback = FeedbackFactory()
    Feedback.objects.filter(pk=feedback.pk).update(
        leased_until=timezone.now() + timedelta(seconds=60)
    )
    assert services.feedback_deliver(feedback_id=feedback.pk) is None
    assert selectors.feedback_due_ids(now=timezone.now(), limit=10) == []
