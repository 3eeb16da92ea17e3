from datetime import timedelta

import pytest

from chat import services
from chat.exceptions import RequestIdConflict
from chat.models import Message, Turn

pytestmark = pytest.mark.django_db


def test_an_attempt_overtaken_by_a_retry_writes_nothing(user):
    first = services.message_reply_begin(user=user, message="slow one", client_request_id="r-1")
    # The first attempt looks abandoned (no progress for long), so a retry claims the turn.
    Turn.objects.filter(pk=first.pk).update(started_at=first.started_at - timedelta(hours=1))
    retry = services.message_reply_begin(user=user, message="slow one", client_request_id="r-1")
    assert retry.pk == first.pk and retry.attempts == 2

    with pytest.raises(RequestIdConflict):
        services.message_reply_run(first, message="slow one", endpoint="test")
    assert Message.objects.filter(role="assistant").count() == 0

    result = services.message_reply_run(retry, message="slow one", endpoint="test")
    assert result.turn.status == "completed"
    assert Message.objects.filter(role="assistant").count() == 1
