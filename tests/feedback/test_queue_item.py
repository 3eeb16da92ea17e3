import pytest

from feedback import services
from feedback.models import QueueItem
from tests.factories import TurnFactory

pytestmark = pytest.mark.django_db


def test_a_turn_is_queued_once_whoever_asks():
    turn = TurnFactory()

    item, created = services.review_enqueue(turn=turn, reason="thumbs down")
    again, created_again = services.review_enqueue(turn=turn, reason="low rating")

    assert created and not created_again
    assert again.pk == item.pk
    assert QueueItem.objects.get(turn=turn).reason == "thumbs down"
    assert item.state == QueueItem.State.NEW
