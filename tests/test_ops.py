"""`/health/` and `/metrics` for operators, read from the database at request time."""

import pytest

from chat import tracing
from chat.models import Turn
from tests.conftest import deliver_traces
from tests.factories import TurnFactory

pytestmark = pytest.mark.django_db


def test_health_reports_the_trace_backlog_and_that_mlflow_answers(client, api, turn_of):
    turn_of()
    body = client.get("/health/").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["tracking_server"] == "ok"
    assert body["traces"]["pending"] == 1 and body["traces"]["oldest_pending_age_s"] >= 0

    deliver_traces()
    body = client.get("/health/").json()
    assert body["traces"]["pending"] == 0 and body["traces"]["exported"] == 1


def test_health_is_degraded_not_down_while_the_tracking_server_is_away(client, settings, api):
    settings.MLFLOW_HTTP_REQUEST_TIMEOUT = 1
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name="away")
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["tracking_server"] == "unreachable"


def test_metrics_count_turns_traces_and_feedback_in_prometheus_format(client, api, turn_of):
    turn_of()
    turn_of()
    TurnFactory(status=Turn.Status.FAILED, error="Abandoned: the worker stopped", latency_ms=None)
    deliver_traces()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'chat_turns_total{status="completed"} 2.0' in text
    assert 'chat_turns_total{status="failed"} 1.0' in text
    assert "chat_turns_abandoned_total 1.0" in text
    assert 'chat_traces{state="exported"} 2.0' in text
    assert 'chat_traces{state="pending"} 0.0' in text
    assert "chat_trace_oldest_pending_age_seconds 0.0" in text
    assert 'chat_turn_latency_seconds_bucket{le="+Inf"} 2.0' in text
    assert 'chat_feedback{state="pending"} 0.0' in text


def test_command_times_take_a_date_an_iso_time_or_a_time_ago():
    from datetime import timedelta

    from django.core.management import CommandError
    from django.utils import timezone

    from chatproject.commands import parse_when

    assert parse_when("2026-12-01", "--since").isoformat() == "2026-12-01T00:00:00+00:00"
    ago = timezone.now() - parse_when("1d", "--since")
    assert timedelta(hours=23, minutes=59) < ago <= timedelta(days=1, seconds=5)
    assert timezone.now() - parse_when("30m", "--since") < timedelta(minutes=31)
    with pytest.raises(CommandError, match="time ago such as 1d"):
        parse_when("yesterday", "--since")
