from datetime import timedelta

import pytest

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
        services.turn_answer(first)
    assert Message.objects.filter(role="assistant").count() == 0

    result = services.turn_answer(retry)
    assert result.turn.status == "completed"
    assert Message.objects.filter(role="assistant").count() == 1
