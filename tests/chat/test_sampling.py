"""TRACE_SAMPLE_RATIO: every turn stored and counted, a share of traces written to MLflow at once,
and any sampled-out trace written later, complete and tagged, when somebody cares about it."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chat import selectors, tracing
from chat.models import TraceExport
from tests.conftest import deliver_traces

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _mlflow_trace_ids(experiment_id: str) -> set[str]:
    found = mlflow.MlflowClient().search_traces(
        locations=[experiment_id], max_results=1000, include_spans=False
    )
    return {t.info.trace_id for t in found}


def _turns_sampled_out(settings, api, turn_of, n: int = 2) -> list[dict]:
    settings.TRACE_SAMPLE_RATIO = 0.0
    bodies = [turn_of(f"question {i}") for i in range(n)]
    deliver_traces()
    return bodies


# --- The decision ------------------------------------------------------------------------------


def test_the_decision_follows_the_ratio_and_is_the_same_every_time(settings):
    ids = [tracing.new_trace_id(uuid.uuid4().int) for _ in range(20_000)]
    settings.TRACE_SAMPLE_RATIO = 0.1
    kept = [t for t in ids if tracing.trace_sampled(trace_id=t, endpoint="api_chat")]
    assert 1_800 < len(kept) < 2_200
    assert kept == [t for t in ids if tracing.trace_sampled(trace_id=t, endpoint="api_chat")]

    settings.TRACE_SAMPLE_RATIO = 0.0
    assert not any(tracing.trace_sampled(trace_id=t, endpoint="api_chat") for t in ids)
    settings.TRACE_SAMPLE_RATIO = 1.0
    assert all(tracing.trace_sampled(trace_id=t, endpoint="api_chat") for t in ids)

    # Ratios below 0.5 keep traces too (uuid4's fixed variant bits must not decide).
    settings.TRACE_SAMPLE_RATIO = 0.01
    assert 120 < sum(tracing.trace_sampled(trace_id=t, endpoint="x") for t in ids) < 280


def test_an_endpoint_override_wins_over_the_ratio(settings):
    settings.TRACE_SAMPLE_RATIO = 0.0
    settings.TRACE_SAMPLE_RATIO_BY_ENDPOINT = {"seed_chat": 1.0}
    trace_id = tracing.new_trace_id(uuid.uuid4().int)
    assert tracing.trace_sampled(trace_id=trace_id, endpoint="seed_chat")
    assert not tracing.trace_sampled(trace_id=trace_id, endpoint="api_chat")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRACE_SAMPLE_RATIO", "1.5"),
        ("TRACE_SAMPLE_RATIO", "ten percent"),
        ("TRACE_SAMPLE_RATIO_BY_ENDPOINT", "api_chat=-0.1"),
    ],
)
def test_a_ratio_outside_0_to_1_stops_the_app_at_start_up_with_a_clear_error(name, value):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "x",
        "DJANGO_DOT_ENV": "",
        name: value,
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "expected a number from 0 to 1" in done.stderr and name in done.stderr


# --- Sampling with exact accounting --------------------------------------------------------------


def test_a_tenth_of_the_traces_reach_mlflow_and_every_turn_is_counted(
    settings, api, turn_of, mlflow_experiment, client
):
    settings.TRACE_SAMPLE_RATIO = 0.1
    bodies = [turn_of(f"question {i}") for i in range(200)]
    deliver_traces()

    trace_ids = [b["trace_id"] for b in bodies]
    expected = {t for t in trace_ids if tracing.trace_sampled(trace_id=t, endpoint="api_chat")}
    assert 5 <= len(expected) <= 45  # about 20; the exact set is what counts
    assert _mlflow_trace_ids(mlflow_experiment) == expected

    # Every turn is stored whole, sampled out or not.
    assert TraceExport.objects.filter(trace_id__in=trace_ids).count() == 200
    sampled_out = set(
        TraceExport.objects.filter(state=TraceExport.State.SAMPLED_OUT).values_list(
            "trace_id", flat=True
        )
    )
    assert sampled_out == set(trace_ids) - expected

    accounting = selectors.trace_accounting()
    assert accounting["answered"] == 200
    assert accounting["traced"] == accounting["in_mlflow"] == len(expected)
    assert accounting["sampled_out"] == 200 - len(expected)
    assert accounting["traced"] + accounting["sampled_out"] == accounting["answered"]
    assert accounting["pending"] == accounting["failed"] == accounting["unaccounted"] == 0

    text = client.get("/metrics").content.decode()
    assert f'chat_answered_turns{{trace="in_mlflow"}} {len(expected)}.0' in text
    assert f'chat_answered_turns{{trace="sampled_out"}} {200 - len(expected)}.0' in text
    assert 'chat_answered_turns{trace="pending"} 0.0' in text
    assert f'chat_traces{{state="sampled_out"}} {200 - len(expected)}.0' in text
    assert 'chat_traces{state="pending"} 0.0' in text
    assert "chat_trace_oldest_pending_age_seconds 0.0" in text

    health = client.get("/health/").json()
    assert health["status"] == "ok"
    assert health["traces"]["sampled_out"] == 200 - len(expected)


def test_audit_counts_sampled_out_turns_apart_and_finds_nothing_wrong(
    settings, api, turn_of, mlflow_experiment
):
    settings.TRACE_SAMPLE_RATIO = 0.0
    turn_of("not traced")
    settings.TRACE_SAMPLE_RATIO = 1.0
    turn_of("traced")
    deliver_traces()

    out = _audit()
    assert "1 sampled out (kept, not written)" in out
    assert "0 wrong or missing, 0 waiting for delivery" in out
    assert "turns: 2 answered = 1 traced (1 in MLflow, 0 waiting, 0 failed; 0 written late)" in out
    assert "+ 1 sampled out + 0 untraced" in out
    assert "MLflow matches the database" in out


def _audit(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_traces", *args, stdout=out)
    return out.getvalue()


def test_a_turn_whose_trace_row_is_gone_is_unaccounted_and_fails_the_audit(
    settings, api, turn_of, mlflow_experiment
):
    settings.TRACE_SAMPLE_RATIO = 0.0
    body = turn_of("its row will go")
    turn_of("stays sampled out")
    TraceExport.objects.filter(trace_id=body["trace_id"]).delete()

    accounting = selectors.trace_accounting()
    assert (accounting["answered"], accounting["sampled_out"]) == (2, 1)
    assert accounting["unaccounted"] == 1
    with pytest.raises(CommandError, match="the audit found problems"):
        _audit()
