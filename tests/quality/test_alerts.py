from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Turn
from feedback.models import Feedback
from quality import selectors, services, webhooks
from quality.models import Alert, AlertEvent, WebhookDelivery
from tests.factories import FeedbackFactory, TurnFactory

pytestmark = pytest.mark.django_db


def _votes(bad: int, good: int, **turn_fields) -> None:
    for _ in range(bad):
        FeedbackFactory(is_correct=False, turn=TurnFactory(**turn_fields))
    for _ in range(good):
        FeedbackFactory(is_correct=True, turn=TurnFactory(**turn_fields))


def test_negative_share_counts_owner_votes_in_the_window():
    _votes(bad=3, good=5)
    FeedbackFactory(is_correct=None, rating=2)  # rated 1-2: negative
    FeedbackFactory(is_correct=None, rating=3)
    old = FeedbackFactory(is_correct=False)
    Feedback.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=2))

    figure = selectors.alert_figure(metric="negative_share", window_minutes=15)

    assert figure.samples == 10
    assert figure.value == pytest.approx(4 / 10)


def test_error_rate_and_p95_latency_over_the_window_and_by_model():
    for ms in range(1, 101):  # 1..100 ms
        TurnFactory(latency_ms=ms, model="m1")
    TurnFactory(latency_ms=5000, model="m2")
    for _ in range(25):
        TurnFactory(status=Turn.Status.FAILED, model="m1", latency_ms=None)
    TurnFactory(status=Turn.Status.PENDING, model="m1")

    error = selectors.alert_figure(metric="error_rate", window_minutes=5, model="m1")
    p95 = selectors.alert_figure(metric="p95_latency_ms", window_minutes=5, model="m1")
    p95_all = selectors.alert_figure(metric="p95_latency_ms", window_minutes=5)

    assert (error.value, error.samples) == (pytest.approx(25 / 125), 125)
    assert (p95.value, p95.samples) == (95.0, 100)
    assert p95_all.samples == 101 and p95_all.value == 96.0


def test_an_alert_fires_then_resolves_with_events_and_slack_shaped_webhooks(receiver):
    alert = Alert.objects.create(
        name="Bad answers",
        metric=Alert.Metric.NEGATIVE_SHARE,
        window_minutes=15,
        threshold=0.3,
        min_samples=5,
        webhook_url=receiver.url,
    )
    _votes(bad=2, good=1)
    assert services.alert_evaluate(alert=alert) is None  # 3 samples: too few to decide

    _votes(bad=3, good=1)  # 5 bad of 7
    fired = services.alert_evaluate(alert=alert)
    assert fired.state == "firing" and fired.value == pytest.approx(5 / 7)
    assert services.alert_evaluate(alert=alert) is None  # still firing: no new event

    Feedback.objects.filter(is_correct=False).update(updated_at=timezone.now() - timedelta(hours=1))
    _votes(bad=1, good=9)
    resolved = services.alert_evaluate(alert=alert)
    assert resolved.state == "resolved" and resolved.value == pytest.approx(1 / 12)

    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.last_samples == 12
    assert list(AlertEvent.objects.order_by("id").values_list("state", flat=True)) == [
        "firing",
        "resolved",
    ]
    assert webhooks.webhooks_deliver_due() == {"delivered": 2}
    firing_body, resolved_body = receiver.json(0), receiver.json(1)
    assert set(firing_body) == {"text"} and set(resolved_body) == {"text"}
    assert firing_body["text"].startswith(":rotating_light: FIRING Bad answers")
    assert "71.4%" in firing_body["text"] and "threshold 30.0%" in firing_body["text"]
    assert resolved_body["text"].startswith(":white_check_mark: RESOLVED Bad answers")
    assert WebhookDelivery.objects.filter(alert=alert, state="delivered").count() == 2


def test_the_worker_pass_evaluates_alerts(settings):
    settings.QUALITY_ALERT_INTERVAL_S = 0
    Alert.objects.create(
        name="Errors", metric=Alert.Metric.ERROR_RATE, threshold=0.1, min_samples=3
    )
    TurnFactory.create_batch(3, status=Turn.Status.FAILED)

    lines = services.quality_worker_pass()

    assert "alert Errors firing: 1" in lines
    assert Alert.objects.get().state == "firing"


def test_metrics_show_the_alert_figures(client):
    Alert.objects.create(
        name="Slow", metric=Alert.Metric.P95_LATENCY_MS, threshold=50, window_minutes=10
    )
    for ms in (10, 20, 30, 40, 500):
        TurnFactory(latency_ms=ms)
    _votes(bad=1, good=3)

    text = client.get("/metrics").content.decode()

    labels = 'alert="Slow",metric="p95_latency_ms",window_minutes="10"'
    assert f"chat_quality_alert_value{{{labels}}} 500.0" in text
    assert f"chat_quality_alert_samples{{{labels}}} 9.0" in text
    assert 'chat_quality_alert_threshold{alert="Slow",metric="p95_latency_ms"} 50.0' in text
    assert 'chat_quality_alert_firing{alert="Slow",metric="p95_latency_ms"} 0.0' in text
    assert 'chat_feedback_votes_total{kind="negative"} 1.0' in text
    assert 'chat_review_queue_items{state="new"} 0.0' in text
