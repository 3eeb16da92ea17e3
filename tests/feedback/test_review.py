from datetime import timedelta

import pytest
from django.utils import timezone

from feedback import selectors, services
from feedback.models import Feedback, ReviewClaim
from tests.factories import FeedbackFactory, UserFactory, answered_turn

pytestmark = pytest.mark.django_db

REVIEW_URL = "/admin/chat/turn/review/"


def _disliked(question: str, *, comment: str = "", minutes_ago: int = 0, **fields):
    turn, answer = answered_turn(question=question, answer=f"answer to {question}", **fields)
    turn.created_at = timezone.now() - timedelta(minutes=minutes_ago)
    turn.save(update_fields=["created_at"])
    FeedbackFactory(turn=turn, is_correct=False, comment=comment)
    return turn


@pytest.fixture
def reviewer(db):
    return UserFactory(is_staff=True, is_superuser=True, username="reviewer")


def test_queue_shows_the_newest_disliked_turn_with_its_question_answer_and_comment(
    admin_client,
):
    _disliked("older question", minutes_ago=5)
    _disliked("newest question", comment="It ignored my order number")
    liked, _ = answered_turn(question="liked question")
    FeedbackFactory(turn=liked, is_correct=True)

    page = admin_client.get(REVIEW_URL).content.decode()

    assert "newest question" in page
    assert "answer to newest question" in page
    assert "It ignored my order number" in page
    assert "Bad answer" in page
    assert "<strong>0 of 2</strong> reviewed" in page
    assert "liked question" not in page and "older question" not in page


def test_labelling_incorrect_stores_the_staff_label_and_opens_the_next_turn(
    admin_client, admin_user
):
    newest = _disliked("newest question")
    older = _disliked("older question", minutes_ago=5)

    response = admin_client.post(
        REVIEW_URL,
        {"turn": newest.pk, "decision": "incorrect", "expected_response": "Quote the order."},
        follow=True,
    )

    label = Feedback.objects.get(turn=newest, user=admin_user)
    assert (label.is_correct, label.expected_response) == (False, "Quote the order.")
    assert label.delivery_state == Feedback.Delivery.PENDING
    page = response.content.decode()
    assert "older question" in page and f'name="turn" value="{older.pk}"' in page
    assert "<strong>1 of 2</strong> reviewed" in page
    assert not ReviewClaim.objects.filter(turn=newest).exists()


def test_a_label_from_the_queue_reaches_mlflow_with_the_staff_member_as_source(
    admin_client, admin_user, api, turn_of, deliver_until_settled, assessments
):
    body = turn_of("Where is my parcel?")
    assert (
        api.put(
            f"/api/messages/{body['message_id']}/feedback/", {"is_correct": False}, format="json"
        ).status_code
        == 201
    )
    deliver_until_settled()
    turn = Feedback.objects.get().turn

    admin_client.post(REVIEW_URL, {"turn": turn.pk, "decision": "correct"})
    deliver_until_settled()

    staff = [a for a in assessments(body["trace_id"]) if a.source.source_id == str(admin_user.id)]
    assert [(a.name, a.feedback.value) for a in staff] == [("response_is_correct", True)]


def test_two_reviewers_are_never_shown_the_same_turn(reviewer):
    first = _disliked("first")
    second = _disliked("second", minutes_ago=1)
    other = UserFactory(is_staff=True)
    filters = selectors.ReviewFilter()

    mine = services.review_claim_next(reviewer=reviewer, filters=filters)
    theirs = services.review_claim_next(reviewer=other, filters=filters)
    nothing_left = services.review_claim_next(reviewer=UserFactory(is_staff=True), filters=filters)

    assert (mine, theirs, nothing_left) == (first, second, None)
    # A reload shows each reviewer the turn they hold.
    assert services.review_claim_next(reviewer=reviewer, filters=filters) == first


def test_an_expired_hold_lets_another_reviewer_take_the_turn(reviewer, settings):
    turn = _disliked("held too long")
    filters = selectors.ReviewFilter()
    earlier = timezone.now() - timedelta(seconds=settings.REVIEW_CLAIM_S + 1)
    services.review_claim_next(reviewer=reviewer, filters=filters, now=earlier)
    other = UserFactory(is_staff=True)

    assert services.review_claim_next(reviewer=other, filters=filters) == turn
    assert ReviewClaim.objects.get(turn=turn).reviewer == other


def test_skip_moves_on_and_restart_brings_skipped_turns_back(admin_client):
    newest = _disliked("newest question")
    _disliked("older question", minutes_ago=5)

    after_skip = admin_client.post(
        REVIEW_URL, {"turn": newest.pk, "decision": "skip"}, follow=True
    ).content.decode()
    assert "older question" in after_skip and "newest question" not in after_skip
    assert not Feedback.objects.filter(turn=newest).exclude(user=newest.user).exists()

    restarted = admin_client.get(REVIEW_URL + "?restart=1", follow=True).content.decode()
    assert "newest question" in restarted


def test_worst_first_puts_thumbs_down_before_low_ratings(reviewer):
    low, _ = answered_turn(question="rated two")
    FeedbackFactory(turn=low, is_correct=None, rating=2)
    down = _disliked("thumbs down", minutes_ago=10)

    queue = selectors.review_queue(
        filters=selectors.ReviewFilter(order="worst"), reviewer=reviewer, now=timezone.now()
    )
    newest = selectors.review_queue(
        filters=selectors.ReviewFilter(), reviewer=reviewer, now=timezone.now()
    )

    assert list(queue) == [down, low]
    assert list(newest) == [low, down]


def test_filters_narrow_the_queue_by_version_environment_comment_and_date(admin_client):
    _disliked("old version", app_version="1.0")
    _disliked("staging one", environment="staging", app_version="2.0")
    _disliked("commented", comment="wrong", app_version="2.0", minutes_ago=1)

    def shown(query: str) -> str:
        return admin_client.get(REVIEW_URL + "?signal=disliked&unlabelled=on&" + query).content

    assert b"old version" in shown("app_version=1.0")
    assert b"staging one" in shown("environment=staging")
    commented = shown("signal=commented&app_version=2.0")
    assert b"commented" in commented and b"<strong>0 of 1</strong>" in commented
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert b"Nothing left to review" in shown(f"since={tomorrow}")


def test_labelled_turns_leave_the_unlabelled_queue_but_count_as_reviewed(admin_client, reviewer):
    turn = _disliked("labelled already")
    services.review_label(reviewer=reviewer, turn=turn, is_correct=True)

    page = admin_client.get(REVIEW_URL).content.decode()
    everything = admin_client.get(REVIEW_URL + "?signal=disliked").content.decode()

    assert "Nothing left to review" in page and "<strong>1 of 1</strong>" in page
    assert "labelled already" in everything  # "Only unlabelled" unticked


def test_an_empty_expected_response_keeps_the_reviewers_earlier_correction(reviewer):
    turn = _disliked("corrected before")
    services.review_label(reviewer=reviewer, turn=turn, is_correct=False, expected_response="A")

    label = services.review_label(reviewer=reviewer, turn=turn, is_correct=False)

    assert label.expected_response == "A"


def test_staff_without_label_permission_cannot_open_the_queue(client):
    viewer = UserFactory(is_staff=True)
    client.force_login(viewer)

    assert client.get(REVIEW_URL).status_code == 403


def test_turn_list_links_to_the_review_queue_and_the_report(admin_client):
    page = admin_client.get("/admin/chat/turn/").content.decode()

    assert REVIEW_URL in page and "/admin/reports/feedback/" in page


def test_admin_index_links_the_review_queue_for_staff_who_may_label(admin_client, client):
    assert REVIEW_URL in admin_client.get("/admin/").content.decode()

    client.force_login(UserFactory(is_staff=True))
    assert REVIEW_URL not in client.get("/admin/").content.decode()
