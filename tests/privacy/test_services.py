"""Erasure against the real database and a real MLflow store (the run's SQLite one)."""

import os

import mlflow
import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from chat import delivery, tracing
from chat.models import ChatSession, Message, TraceExport, Turn
from feedback.models import Feedback
from privacy import services
from privacy.models import Erasure
from tests.privacy.conftest import own_assessments

pytestmark = pytest.mark.django_db


def _erase(user, **kwargs) -> Erasure:
    erasure = services.user_erase(user=user, via=Erasure.Via.COMMAND, **kwargs)
    return services.erasure_finish(erasure=erasure)


def test_erasing_a_user_removes_their_rows_traces_and_assessments_and_verifies(erasable):
    user, other = erasable["user"], erasable["other"]
    user_id = user.pk
    artifact_roots = [
        mlflow.MlflowClient().get_trace(t).info.tags.get("mlflow.artifactLocation")
        for t in erasable["trace_ids"]
    ]

    erasure = _erase(user)

    assert erasure.state == Erasure.State.COMPLETED, erasure.last_error
    assert erasure.rows_removed == {
        "feedback": 3,  # theirs, the staff label on their turn, theirs on the other's turn
        "trace_exports": 3,
        "messages": 6,
        "turns": 3,
        "sessions": 2,  # the hidden one too
        "users": 1,
        "admin_log": 0,
        "dataset_records": 0,
    }
    assert erasure.traces_removed == 3
    assert (
        erasure.assessments_removed == 2
    )  # on the other's trace: the vote and the one it replaced
    assert (erasure.remaining_traces, erasure.remaining_assessments) == (0, 0)
    assert (erasure.trace_ids, erasure.rated_trace_ids) == ([], [])
    assert erasure.subject_user_id == user_id

    assert not get_user_model().objects.filter(pk=user_id).exists()
    assert not Token.objects.filter(user_id=user_id).exists()
    assert not ChatSession.objects.filter(owner_id=user_id).exists()
    assert not Turn.objects.filter(user_id=user_id).exists()
    assert Message.objects.count() == 2  # the other user's question and answer
    assert TraceExport.objects.count() == 1
    assert list(Feedback.objects.values_list("user_id", flat=True)) == [other.pk]

    assert tracing.user_trace_ids(user_id=user_id) == []
    assert tracing.existing_trace_ids(erasable["trace_ids"]) == []
    for root in artifact_roots:
        assert root is None or not os.path.exists(root)
    # The other user's trace stays, with their own rating and nothing of the erased person's.
    assert own_assessments(erasable["bob_trace_id"], str(user_id)) == []
    (kept,) = own_assessments(erasable["bob_trace_id"], str(other.pk))
    assert kept.feedback.value == 5


def test_the_record_holds_ids_and_counts_but_no_username_or_content(erasable):
    user = erasable["user"]
    erasure = _erase(user, requested_by=erasable["staff"])
    stored = repr(list(Erasure.objects.filter(pk=erasure.pk).values()))
    assert user.username not in stored and "alice" not in stored
    assert (erasure.requested_by_id, erasure.via) == (erasable["staff"].pk, "command")


def test_traces_the_database_never_knew_are_found_by_search_and_their_files_removed(
    user, mlflow_experiment, live_trace_of
):
    trace_id, folder = live_trace_of(user.pk)

    erasure = _erase(user)

    assert erasure.state == Erasure.State.COMPLETED
    assert (erasure.traces_removed, erasure.artifacts_removed) == (1, 1)
    assert not os.path.exists(folder) and not os.path.exists(os.path.dirname(folder))
    assert tracing.existing_trace_ids([trace_id]) == []


def test_a_trace_not_yet_delivered_is_never_delivered(user, api, turn_of):
    body = turn_of("not delivered yet")
    assert TraceExport.objects.filter(state="pending").count() == 1

    erasure = _erase(user)

    assert erasure.state == Erasure.State.COMPLETED
    assert delivery.trace_deliver_due() == {}
    assert tracing.existing_trace_ids([body["trace_id"]]) == []


def test_a_trace_written_while_its_person_is_erased_is_taken_back_out(
    user, api, turn_of, monkeypatch
):
    body = turn_of("delivered during the erasure")
    write = tracing.write_traces
    erased = []

    def erase_mid_write(payloads):
        erased.append(services.user_erase(user=user, via=Erasure.Via.SELF, requested_by=user))
        return write(payloads)  # lands after the rows are gone

    monkeypatch.setattr(tracing, "write_traces", erase_mid_write)
    assert delivery.trace_deliver_due() == {"exported": 1}

    assert tracing.existing_trace_ids([body["trace_id"]]) == []  # the deliverer took it out
    erasure = services.erasure_finish(erasure=erased[0])
    # Its lease was held when the rows went, so the check waits for the lease to end...
    assert erasure.state == Erasure.State.PENDING_MLFLOW
    assert "in flight" in erasure.last_error and erasure.remaining_traces == 0
    Erasure.objects.filter(pk=erasure.pk).update(in_flight_until=None)
    assert services.erasure_finish(erasure=erasure).state == Erasure.State.COMPLETED


def test_with_the_tracking_store_down_the_database_part_completes_and_a_retry_finishes(
    erasable, settings
):
    user_id = erasable["user"].pk
    experiment_name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    # The process started while the tracking server was down: no experiment, every call fails.
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=experiment_name)

    erasure = _erase(erasable["user"])

    assert erasure.state == Erasure.State.PENDING_MLFLOW
    assert erasure.last_error.startswith("TrackingUnavailable")
    assert erasure.attempts == 1 and erasure.remaining_traces is None
    assert not Turn.objects.filter(user_id=user_id).exists()  # the database part is done
    assert len(erasure.trace_ids) == 3 and erasure.rated_trace_ids == [erasable["bob_trace_id"]]

    assert tracing.configure(
        tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=experiment_name
    )
    (finished,) = services.erasure_finish_pending()

    assert finished.pk == erasure.pk and finished.state == Erasure.State.COMPLETED
    assert (finished.attempts, finished.traces_removed, finished.assessments_removed) == (2, 3, 2)
    assert tracing.user_trace_ids(user_id=user_id) == []
    assert own_assessments(erasable["bob_trace_id"], str(user_id)) == []


def test_the_feedback_workers_chore_retries_an_outage_with_backoff(erasable, settings):
    from django.utils.module_loading import import_string

    assert import_string(settings.FEEDBACK_WORKER_CHORES[0]) is services.erasures_finish_due
    experiment_name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    erasure = services.user_erase(user=erasable["user"], via=Erasure.Via.SELF)
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=experiment_name)

    (line,) = services.erasures_finish_due()
    assert (
        line.startswith(f"erasure {erasure.pk}: pending_mlflow") and "TrackingUnavailable" in line
    )
    assert services.erasures_finish_due() == []  # backing off: not tried again at once

    assert tracing.configure(
        tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=experiment_name
    )
    Erasure.objects.filter(pk=erasure.pk).update(last_attempt_at=None)
    (line,) = services.erasures_finish_due()
    assert line == f"erasure {erasure.pk}: completed, 3 traces removed"
