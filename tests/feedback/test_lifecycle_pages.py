"""Where a queued turn stands, on the three pages staff use: the review queue, the Turn admin
(list and page) and the report. The lifecycle itself is the evals app's (tests/evals)."""

import pytest

from feedback import services
from feedback.models import QueueItem
from tests.factories import FeedbackFactory, UserFactory, answered_turn

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(db):
    turn, _ = answered_turn(question="Where is my parcel?", answer="On the moon.")
    FeedbackFactory(turn=turn, user=turn.user, is_correct=False)
    services.review_enqueue(turn=turn, reason="Disliked answers")
    return turn


def test_the_review_queue_shows_the_lifecycle_of_the_turn_it_holds(admin_client, queued):
    page = admin_client.get("/admin/chat/turn/review/?signal=queued&unlabelled=on").content
    assert b'id="review-lifecycle"' in page
    assert b"Lifecycle: <strong>in review</strong>" in page  # shown: new -> in review


def test_the_turn_admin_shows_the_lifecycle_in_its_list_and_on_its_page(admin_client, queued):
    reviewer = UserFactory(is_staff=True)
    services.review_label(
        reviewer=reviewer, turn=queued, is_correct=False, expected_response="In Leeds."
    )

    listing = admin_client.get("/admin/chat/turn/").content.decode()
    page = admin_client.get(f"/admin/chat/turn/{queued.pk}/change/").content.decode()

    assert "column-lifecycle" in listing and ">corrected<" in listing
    assert "Lifecycle" in page and "corrected" in page
    assert QueueItem.objects.get(turn=queued).state == QueueItem.State.CORRECTED


def test_the_report_counts_queued_turns_by_stage(admin_client, queued):
    other, _ = answered_turn(question="Second?", answer="No.")
    services.review_enqueue(turn=other, reason="Disliked answers")
    services.review_label(reviewer=UserFactory(is_staff=True), turn=other, is_correct=True)

    page = admin_client.get("/admin/reports/feedback/").content.decode()

    table = page[page.index('id="lifecycle-table"') :]
    assert '<td>new</td><td class="num">1</td>' in table
    assert '<td>not a problem</td><td class="num">1</td>' in table
