"""For operators: `/health/` (is each part answering, how big is the backlog) and `/metrics`.

Every figure is read from the database at request time, so all app workers and instances report
the same numbers, whichever one the load balancer or Prometheus reaches.
"""

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chat import selectors as chat_selectors
from chat import tracing
from feedback import selectors as feedback_selectors
from quality.metrics import QualityCollector


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 while the app can answer turns (the database is up); details for people and probes.

    The tracking server being down is "degraded", not down: turns still answer and their traces
    wait in the database.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        traces = chat_selectors.trace_backlog()
        feedback = feedback_selectors.feedback_backlog()
    except DatabaseError:
        return JsonResponse({"status": "down", "database": "unreachable"}, status=503)
    tracking = tracing.tracking_health()
    body = {
        "status": "ok" if tracking and not traces["failed"] else "degraded",
        "database": "ok",
        "tracking_server": "ok" if tracking else "unreachable",
        "traces": traces,
        "feedback": feedback,
    }
    return JsonResponse(body)


class _DatabaseCollector:
    """Prometheus metrics computed from the database at scrape time."""

    def collect(self):
        turns = chat_selectors.turn_stats()
        counter = CounterMetricFamily("chat_turns", "Chat turns by status", labels=["status"])
        for status, n in sorted(turns["by_status"].items()):
            counter.add_metric([status], n)
        yield counter
        yield CounterMetricFamily(
            "chat_turns_abandoned",
            "Turns closed because their worker died",
            value=turns["abandoned"],
        )
        buckets = [(str(ms / 1000), n) for ms, n in turns["latency_buckets"]]
        buckets.append(("+Inf", turns["latency_count"]))
        yield HistogramMetricFamily(
            "chat_turn_latency_seconds",
            "Time to answer a turn (LLM included)",
            buckets=buckets,
            sum_value=turns["latency_sum_ms"] / 1000,
        )
        traces = chat_selectors.trace_backlog()
        gauge = GaugeMetricFamily(
            "chat_traces", "Recorded traces by delivery state", labels=["state"]
        )
        for state in ("pending", "exported", "failed", "sampled_out"):
            gauge.add_metric([state], traces[state])
        yield gauge
        written_late = CounterMetricFamily(
            "chat_traces_written_late",
            "Sampled-out traces written to MLflow later, by why they were asked for",
            labels=["reason"],
        )
        for reason, n in traces["written_late"].items():
            written_late.add_metric([reason], n)
        yield written_late
        accounting = chat_selectors.trace_accounting()
        gauge = GaugeMetricFamily(
            "chat_answered_turns",
            "Answered turns by where their trace is; the series add up to the answered turns",
            labels=["trace"],
        )
        for where in ("in_mlflow", "pending", "failed", "sampled_out", "untraced", "unaccounted"):
            gauge.add_metric([where], accounting[where])
        yield gauge
        yield CounterMetricFamily(
            "chat_traces_repaired",
            "Traces rewritten by audit_traces --repair",
            value=traces["repaired"],
        )
        yield GaugeMetricFamily(
            "chat_trace_oldest_pending_age_seconds",
            "Age of the oldest trace not yet in MLflow (0 when none waits)",
            value=traces["oldest_pending_age_s"],
        )
        feedback = feedback_selectors.feedback_backlog()
        gauge = GaugeMetricFamily("chat_feedback", "Feedback by delivery state", labels=["state"])
        for state, n in sorted(feedback.items()):
            gauge.add_metric([state], n)
        yield gauge


_registry = CollectorRegistry(auto_describe=False)
_registry.register(_DatabaseCollector())
_registry.register(QualityCollector())  # rules, alerts, the review queue and webhooks


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition; restrict it to your scrapers at the load balancer."""
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
