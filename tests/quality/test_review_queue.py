from datetime import timedelta

import pytest
from django.utils import timezone

from feedback.models import QueueItem
from quality import services
from tests.factories import FeedbackFactory, answered_turn

pytestmark = pytest.mark.django_db

REVIEW_URL = "/admin/chat/turn/review/"
QUEUED = REVIEW_URL + "?signal=queued&unlabelled=on&order=newest"


def _queued_by_rule(make_rule, question: str, *, minutes_ago: int = 0, **feedback):
    turn, _ = answered_turn(question=question, answer=f"answer to {question}")
    turn.created_at = timezone.now() - timedelta(minutes=minutes_ago)
    turn.save(update_fields=["created_at"])
    FeedbackFactory(turn=turn, **({"is_correct": False} | feedback))
    rule = make_rule(name="Disliked answers", thumbs_down=True)
    services.rule_act(rule=rule, turn=turn)
    return turn


@pytest.fixture
def make_rule(make_rule):
    from quality.models import Rule

    def get_or_make(**fields):
        return Rule.objects.filter(name=fields["name"]).first() or make_rule(**fields)

    return get_or_make


def test_the_queued_filter_shows_the_rules_reason_and_the_item_moves_to_in_review(
    admin_client, make_rule
):
    turn = _queued_by_rule(make_rule, "queued question")
    not_queued, _ = answered_turn(question="disliked but not queued")
    FeedbackFactory(turn=not_queued, is_correct=False)

    page = admin_client.get(QUEUED).content.decode()

    assert "queued question" in page and "disliked but not queued" not in page
    assert "Queued by <strong>Disliked answers</strong> · In review" in page
    assert "Correct · not a problem" in page
    assert QueueItem.objects.get(turn=turn).state == QueueItem.State.IN_REVIEW


def test_queued_first_puts_rule_items_before_newer_turns(admin_client, make_rule):
    _queued_by_rule(make_rule, "queued long ago", minutes_ago=30)
    newer, _ = answered_turn(question="newer disliked")
    FeedbackFactory(turn=newer, is_correct=False)

    page = admin_client.get(REVIEW_URL + "?signal=disliked&unlabelled=on&order=queued")

    assert "queued long ago" in page.content.decode()
    assert "newer disliked" not in page.content.decode()


def test_labelled_wrong_with_a_correction_is_corrected(admin_client, admin_user, make_rule):
    turn = _queued_by_rule(make_rule, "to correct")

    admin_client.post(
        QUEUED, {"turn": turn.pk, "decision": "incorrect", "expected_response": "The fix."}
    )

    item = QueueItem.objects.get(turn=turn)
    assert item.state == QueueItem.State.CORRECTED
    assert item.decided_by == admin_user and item.decided_at is not None


def test_labelled_wrong_without_a_correction_stays_in_review(admin_client, make_rule):
    turn = _queued_by_rule(make_rule, "wrong, no fix yet")
    admin_client.get(QUEUED)

    admin_client.post(QUEUED, {"turn": turn.pk, "decision": "incorrect"})

    item = QueueItem.objects.get(turn=turn)
    assert item.state == QueueItem.State.IN_REVIEW and item.decided_at is None


def test_labelled_correct_is_not_a_problem(admin_client, admin_user, make_rule):
    turn = _queued_by_rule(make_rule, "actually fine")

    response = admin_client.post(QUEUED, {"turn": turn.pk, "decision": "correct"}, follow=True)

    item = QueueItem.objects.get(turn=turn)
    assert item.state == QueueItem.State.NOT_A_PROBLEM and item.decided_by == admin_user
    # Decided: it leaves the queued filter.
    assert "Nothing left to review" in response.content.decode()
