import os
import time

import mlflow
import pytest
from mlflow.entities.trace_location import MlflowExperimentLocation
from mlflow.tracing.client import TracingClient

from chat import tracing
from chat.models import Turn
from feedback import services as feedback_services
from tests.factories import UserFactory


@pytest.fixture
def erasable(user, other_user, api, other_api, turn_of, deliver_until_settled, find_traces):
    """`user` with three turns in two conversations (one hidden), their own feedback (changed
    once, so MLflow keeps a superseded one), a staff label on one of their turns, and feedback
    they gave as staff on `other_user`'s turn (also changed once); `other_user` rates it too."""
    staff = UserFactory(is_staff=True)
    t1 = turn_of("alice one: my card is 4111 1111 1111 1111")
    t2 = turn_of("alice two", **{"X-Session-ID": t1["session_id"]})
    t3 = turn_of("alice in a conversation she deleted")
    assert api.delete(f"/api/sessions/{t3['session_id']}/").status_code == 204
    b1 = turn_of("bob one", client=other_api)

    url = f"/api/messages/{t1['message_id']}/feedback/"
    body = {"rating": 2, "comment": "alice's comment", "expected_response": "alice's answer"}
    assert api.put(url, body, format="json").status_code == 201
    deliver_until_settled()
    assert api.put(url, {"rating": 3, "comment": "changed"}, format="json").status_code == 200

    bob_turn = Turn.objects.get(trace_id=b1["trace_id"])
    feedback_services.feedback_submit(
        user=staff, turn=Turn.objects.get(trace_id=t2["trace_id"]), is_correct=False
    )
    feedback_services.feedback_submit(
        user=user, turn=bob_turn, is_correct=True, comment="alice on bob"
    )
    deliver_until_settled()
    feedback_services.feedback_submit(
        user=user, turn=bob_turn, is_correct=False, comment="alice changed her mind"
    )
    bob_url = f"/api/messages/{b1['message_id']}/feedback/"
    assert other_api.put(bob_url, {"rating": 5}, format="json").status_code == 201
    deliver_until_settled()
    find_traces()
    return {
        "user": user,
        "other": other_user,
        "staff": staff,
        "trace_ids": [t1["trace_id"], t2["trace_id"], t3["trace_id"]],
        "bob_trace_id": b1["trace_id"],
    }


@pytest.fixture
def live_trace_of():
    """A trace made by MLflow's own tracer for a user id: not in our database, and with the
    `traces.json` artifact file its exporter writes (when spans do not go to the tracking store)
    and `delete_traces` leaves behind."""

    def make(user_id: int) -> tuple[str, str]:
        # Where MLflow's live tracer writes: the app's experiment (the app itself never uses it).
        mlflow.tracing.set_destination(
            MlflowExperimentLocation(experiment_id=tracing.experiment_id())
        )

        @mlflow.trace(name="side_channel")
        def answer(question: str) -> str:
            mlflow.update_current_trace(metadata={"mlflow.trace.user": str(user_id)})
            return "answer"

        answer("a question sent by a script")
        trace_id = mlflow.get_last_active_trace_id()
        mlflow.flush_trace_async_logging()
        deadline = time.monotonic() + 20
        while (trace := mlflow.MlflowClient().get_trace(trace_id)) is None or not trace.data.spans:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        TracingClient(mlflow.get_tracking_uri())._upload_trace_data(trace.info, trace.data)
        folder = trace.info.tags["mlflow.artifactLocation"]
        assert os.path.isfile(os.path.join(folder, "traces.json"))
        return trace_id, folder

    return make


def own_assessments(trace_id: str, source_id: str) -> list:
    """Every assessment (superseded ones too) on a trace logged by `source_id`."""
    info = mlflow.MlflowClient().get_trace(trace_id, display=False).info
    return [a for a in info.assessments or [] if a.source.source_id == source_id]
