from io import StringIO

import mlflow
import pytest
from django.core.management import CommandError, call_command

from chat import tracing
from privacy.models import Erasure

pytestmark = pytest.mark.django_db


def _run(*args) -> str:
    out = StringIO()
    call_command("erase_user", *args, stdout=out)
    return out.getvalue()


def test_erase_user_reports_its_progress_and_the_verification(erasable):
    user_id = erasable["user"].pk
    out = _run(erasable["user"].username)

    assert f"erasing user id={user_id} from the database" in out
    assert (
        "removed 3 feedback, 3 trace_exports, 6 messages, 3 turns, 2 sessions, 1 users, 0 admin_log"
        in out
    )
    assert "[3/3] traces deleted" in out
    assert f"verifying: search metadata.`mlflow.trace.user` = '{user_id}'" in out
    assert "18 database row(s), 3 trace(s)" in out and "verified: 0 traces left" in out
    assert Erasure.objects.get().state == Erasure.State.COMPLETED


def test_an_unknown_username_is_an_error():
    with pytest.raises(CommandError, match="no user 'nobody'"):
        _run("nobody")


def test_pending_finishes_what_an_outage_left_and_fails_while_it_lasts(erasable, settings):
    name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=name)
    with pytest.raises(CommandError, match="1 erasure\\(s\\) still pending MLflow"):
        _run(erasable["user"].username)
    with pytest.raises(CommandError, match="still pending"):
        _run("--pending")

    assert tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=name)
    out = _run("--pending")

    assert "verified: 0 traces left in MLflow" in out
    assert Erasure.objects.get().state == Erasure.State.COMPLETED
    assert _run("--pending").strip() == "no erasure pending"


def test_the_command_waits_out_a_delivery_in_flight_then_verifies(user, api, turn_of):
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import TraceExport

    turn_of("being delivered right now")
    TraceExport.objects.update(leased_until=timezone.now() + timedelta(seconds=1))

    out = _run(user.username)

    assert "for a trace delivery in flight to end" in out
    assert "verified: 0 traces left in MLflow" in out
