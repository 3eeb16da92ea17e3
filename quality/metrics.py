"""Prometheus figures for /metrics (chatproject.ops registers the collector).

Computed at scrape time from the database (a quick aggregate per alert), so every app process
reports the same numbers. Imports nothing heavier than the ORM: the web process serves these.
"""

from django.db.models import Count, F, Q
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from feedback.models import Feedback, QueueItem
from quality import selectors
from quality.models import Alert, Rule, WebhookDelivery


class QualityCollector:
    def collect(self):
        value = GaugeMetricFamily(
            "chat_quality_alert_value",
            "Each alert's figure over its window now (share 0-1, or milliseconds)",
            labels=["alert", "metric", "window_minutes"],
        )
        samples = GaugeMetricFamily(
            "chat_quality_alert_samples",
            "Feedback or turns in each alert's window now",
            labels=["alert", "metric", "window_minutes"],
        )
        threshold = GaugeMetricFamily(
            "chat_quality_alert_threshold", "Each alert's threshold", labels=["alert", "metric"]
        )
        firing = GaugeMetricFamily(
            "chat_quality_alert_firing",
            "1 while the app's own evaluation has the alert firing",
            labels=["alert", "metric"],
        )
        for alert in Alert.objects.filter(enabled=True).order_by("name"):
            figure = selectors.alert_figure(
                metric=alert.metric, window_minutes=alert.window_minutes, model=alert.model
            )
            labels = [alert.name, alert.metric, str(alert.window_minutes)]
            if figure.value is not None:
                value.add_metric(labels, figure.value)
            samples.add_metric(labels, figure.samples)
            threshold.add_metric(labels[:2], alert.threshold)
            firing.add_metric(labels[:2], int(alert.state == Alert.State.FIRING))
        yield from (value, samples, threshold, firing)

        votes = (
            Feedback.objects.filter(selectors.JUDGED, withdrawn=False, user_id=F("turn__user_id"))
            .order_by()
            .aggregate(n=Count("id"), bad=Count("id", filter=selectors.NEGATIVE))
        )
        counter = CounterMetricFamily(
            "chat_feedback_votes",
            "Owners' live votes by kind (negative: thumbs down or rated 1-2)",
            labels=["kind"],
        )
        counter.add_metric(["negative"], votes["bad"])
        counter.add_metric(["positive_or_neutral"], votes["n"] - votes["bad"])
        yield counter

        matches = CounterMetricFamily(
            "chat_quality_rule_matches", "Turns each rule acted on", labels=["rule"]
        )
        for name, n in Rule.objects.annotate(n=Count("matches")).values_list("name", "n"):
            matches.add_metric([name], n)
        yield matches

        queue = GaugeMetricFamily(
            "chat_review_queue_items", "Review queue items by state", labels=["state"]
        )
        by_state = dict(QueueItem.objects.values_list("state").annotate(n=Count("id")).order_by())
        for state in QueueItem.State.values:
            queue.add_metric([state], by_state.get(state, 0))
        yield queue

        hooks = GaugeMetricFamily(
            "chat_webhook_deliveries", "Webhook deliveries by state", labels=["state"]
        )
        by_state = dict(
            WebhookDelivery.objects.values_list("state").annotate(n=Count("id")).order_by()
        )
        for state in WebhookDelivery.State.values:
            hooks.add_metric([state], by_state.get(state, 0))
        yield hooks
        waiting = WebhookDelivery.objects.filter(
            Q(state=WebhookDelivery.State.PENDING), attempts__gt=0
        ).count()
        yield GaugeMetricFamily(
            "chat_webhook_deliveries_retrying",
            "Pending deliveries that failed at least once (a receiver in trouble)",
            value=waiting,
        )
