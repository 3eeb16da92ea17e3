"""Erasure against a real `mlflow server` (artifacts served over HTTP) that the test stops."""

import mlflow
import pytest
from mlflow.tracing.client import TracingClient

from chat import tracing
from privacy import services
from privacy.models import Erasure
from tests.conftest import deliver_traces

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_erasure_with_the_server_down_completes_once_it_is_back(
    user, api, turn_of, mlflow_server, tmp_path
):
    assert tracing.configure(tracking_uri=mlflow_server.url, experiment_name="erasure")
    trace_id = turn_of("to be erased")["trace_id"]
    deliver_traces()
    trace = mlflow.MlflowClient().get_trace(trace_id)
    # The file MLflow's own exporter uploads when spans do not go to the tracking store.
    TracingClient(mlflow.get_tracking_uri())._upload_trace_data(trace.info, trace.data)
    artifacts = list((tmp_path / "mlflow-server" / "artifacts").rglob("traces.json"))
    assert len(artifacts) == 1
    mlflow_server.stop()

    erasure = services.user_erase(user=user, via=Erasure.Via.SELF, requested_by=user)
    erasure = services.erasure_finish(erasure=erasure)
    assert erasure.state == Erasure.State.PENDING_MLFLOW
    assert erasure.last_error.startswith("TrackingUnavailable")
    assert erasure.trace_ids == [trace_id]

    mlflow_server.start()
    (finished,) = services.erasure_finish_pending()

    assert finished.state == Erasure.State.COMPLETED, finished.last_error
    assert (finished.traces_removed, finished.artifacts_removed) == (1, 1)
    assert not artifacts[0].exists()
    assert tracing.user_trace_ids(user_id=erasure.subject_user_id) == []
