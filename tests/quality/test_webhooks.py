import hashlib
import hmac
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from quality import services, webhooks
from quality.models import WebhookDelivery
from tests.factories import FeedbackFactory
from tests.quality.conftest import Receiver

pytestmark = pytest.mark.django_db


def _send_when_due(now) -> str | None:
    due = WebhookDelivery.objects.get()
    return webhooks.webhook_send(delivery_id=due.pk, now=now)


def test_a_rule_match_posts_a_signed_json_body(make_rule, receiver):
    rule = make_rule(name="Disliked", thumbs_down=True, webhook_url=receiver.url)
    turn = FeedbackFactory(is_correct=False, comment="no").turn

    services.rule_act(rule=rule, turn=turn)
    before = int(time.time())
    counts = webhooks.webhooks_deliver_due()

    assert counts == {"delivered": 1}
    [request] = receiver.requests
    expected = hmac.new(rule.webhook_secret.encode(), request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Chat-Signature"] == f"sha256={expected}"
    assert before <= int(request["headers"]["X-Chat-Timestamp"]) <= int(time.time())
    assert request["headers"]["Content-Type"] == "application/json"
    body = receiver.json()
    assert body["event"] == "rule.matched" and body["rule"] == "Disliked"
    assert body["turn"]["id"] == turn.pk and body["turn"]["trace_id"] == turn.trace_id
    assert body["feedback"] == {
        "is_correct": False,
        "rating": None,
        "has_comment": True,
        "has_correction": False,
    }
    delivery = WebhookDelivery.objects.get()
    assert request["headers"]["X-Chat-Delivery"] == str(delivery.pk)
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(make_rule, settings):
    settings.QUALITY_WEBHOOK_RETRY_BASE_S = 10
    with Receiver(statuses=[500, 503]) as receiver:
        rule = make_rule(thumbs_down=True, webhook_url=receiver.url)
        services.rule_act(rule=rule, turn=FeedbackFactory(is_correct=False).turn)

        t0 = timezone.now()
        assert _send_when_due(t0) == "pending"
        first = WebhookDelivery.objects.get()
        assert (first.attempts, first.last_status_code) == (1, 500)
        assert "HTTP 500" in first.last_error
        wait_1 = first.next_attempt_at - timezone.now()
        assert timedelta(seconds=9) < wait_1 <= timedelta(seconds=10)
        # Not due yet: nothing is sent.
        assert webhooks.webhooks_deliver_due() == {}

        assert _send_when_due(first.next_attempt_at) == "pending"
        second = WebhookDelivery.objects.get()
        assert (second.attempts, second.last_status_code) == (2, 503)
        wait_2 = second.next_attempt_at - timezone.now()
        assert timedelta(seconds=19) < wait_2 <= timedelta(seconds=20)  # doubled

        assert _send_when_due(second.next_attempt_at) == "delivered"
        done = WebhookDelivery.objects.get()
        assert (done.state, done.attempts, done.last_status_code) == ("delivered", 3, 200)
        assert done.delivered_at is not None and done.next_attempt_at is None
        # Every attempt sent the same body, signed the same way.
        assert len({r["body"] for r in receiver.requests}) == 1
        assert len({r["headers"]["X-Chat-Signature"] for r in receiver.requests}) == 1


def test_a_delivery_gives_up_after_the_last_attempt(make_rule, settings):
    settings.QUALITY_WEBHOOK_MAX_ATTEMPTS = 2
    with Receiver() as receiver:
        dead_url = receiver.url
    # The receiver is gone: connection refused.
    rule = make_rule(thumbs_down=True, webhook_url=dead_url)
    services.rule_act(rule=rule, turn=FeedbackFactory(is_correct=False).turn)

    assert _send_when_due(timezone.now()) == "pending"
    later = WebhookDelivery.objects.get().next_attempt_at
    assert _send_when_due(later) == "failed"

    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "failed" and delivery.attempts == 2
    assert delivery.last_status_code is None and "Connection" in delivery.last_error
    webhooks.webhook_retry(delivery=delivery)
    assert WebhookDelivery.objects.get().state == "pending"


@pytest.mark.django_db(transaction=True)
def test_a_hanging_receiver_never_stalls_matching(make_rule, settings, user):
    """The worker pass hands webhooks to a thread: a receiver that never answers costs it
    nothing, and the thread gives up on it after the timeout."""
    import socket

    from feedback import services as feedback_services
    from tests.factories import TurnFactory

    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)  # accepts connections, never answers
    settings.QUALITY_WEBHOOK_TIMEOUT_S = 1
    try:
        make_rule(thumbs_down=True, webhook_url=f"http://127.0.0.1:{hanging.getsockname()[1]}/")
        services.quality_worker_pass()
        for _ in range(2):
            turn = TurnFactory(session__owner=user)
            feedback_services.feedback_submit(user=user, turn=turn, is_correct=False)

        started = time.monotonic()
        services.quality_worker_pass()
        elapsed = time.monotonic() - started
        sender = webhooks._sender

        assert elapsed < 0.5
        assert sender is not None and sender.is_alive()  # still waiting on the receiver
        sender.join(timeout=15)
        deliveries = WebhookDelivery.objects.all()
        assert [d.state for d in deliveries] == ["pending", "pending"]
        assert all(d.attempts == 1 and "timed out" in d.last_error for d in deliveries)
    finally:
        hanging.close()
