import uuid

import mlflow
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import tracing
from tests.factories import UserFactory
from tests.llm_server import FakeOpenAIServer
from tests.mlflow_server import MlflowServer


@pytest.fixture
def mlflow_experiment():
    """This test traces into its own experiment of the run's throwaway SQLite store.

    Opt-in: the API client fixtures and the trace readers ask for it; tests that build their
    state with factories and never reach MLflow do not pay for it.
    """
    from django.conf import settings

    assert tracing.configure(
        tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=f"test-{uuid.uuid4().hex}"
    )
    return tracing.experiment_id()


def deliver_traces(timeout: float = 30.0) -> None:
    """Run the trace delivery process's passes until nothing is due (what the worker does)."""
    import time

    from chat import delivery
    from chat.models import TraceExport

    deadline = time.monotonic() + timeout
    while True:
        counts = delivery.trace_deliver_due()
        waiting = TraceExport.objects.filter(state=TraceExport.State.PENDING)
        if not waiting.exists():
            return
        assert time.monotonic() < deadline, list(waiting.values("trace_id", "last_error"))
        if not counts:
            time.sleep(0.1)


@pytest.fixture
def find_traces(mlflow_experiment):
    """Traces of this test's experiment matching an MLflow filter string (delivered first)."""

    def find(filter_string: str | None = None) -> list:
        deliver_traces()
        return mlflow.MlflowClient().search_traces(
            experiment_ids=[mlflow_experiment], filter_string=filter_string, max_results=500
        )

    return find


@pytest.fixture
def get_trace(mlflow_experiment):
    def get(trace_id: str):
        deliver_traces()
        return mlflow.MlflowClient().get_trace(trace_id)

    return get


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user, mlflow_experiment) -> APIClient:
    """An API client signed in as `user` with a real DRF token."""
    return token_client(user)


@pytest.fixture
def token(user, mlflow_experiment) -> str:
    """`user`'s DRF token, for requests sent through the ASGI handler (tests/asgi.py)."""
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def other_api(other_user, mlflow_experiment) -> APIClient:
    return token_client(other_user)


@pytest.fixture
def llm_server(settings):
    """A real OpenAI-compatible server on loopback, with the app pointed at it."""
    with FakeOpenAIServer() as server:
        settings.LLM_BASE_URL = server.base_url
        settings.LLM_MODEL = "test-model"
        settings.LLM_TIMEOUT_S = 1.0
        yield server


@pytest.fixture
def deliver_until_settled():
    """Run the delivery worker's loop until no feedback is pending (or a deadline passes)."""
    import time

    from feedback import selectors, services

    def run(timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        deliver_traces(timeout)
        while selectors.feedback_pending().exists():
            assert time.monotonic() < deadline, list(
                selectors.feedback_pending().values("id", "attempts", "last_error")
            )
            services.feedback_deliver_due()
            time.sleep(0.1)

    return run


@pytest.fixture
def assessments(mlflow_experiment):
    """The valid (or all) assessments on a trace, as MLflow has them now."""

    def fetch(trace_id: str, *, include_invalid: bool = False) -> list:
        found = mlflow.MlflowClient().get_trace(trace_id, display=False).info.assessments or []
        return [a for a in found if include_invalid or a.valid is not False]

    return fetch


@pytest.fixture
def turn_of(api):
    """Send a message as `api`'s user; returns the chat response body."""

    def send(message: str = "Is my refund processed?", client=None, **headers) -> dict:
        response = (client or api).post(
            "/api/chat/", {"message": message}, format="json", headers=headers
        )
        assert response.status_code == 200, response.content
        return response.json()

    return send


@pytest.fixture
def staff_api(db, mlflow_experiment):
    return token_client(UserFactory(is_staff=True))


@pytest.fixture
def world(settings, deliver_until_settled, find_traces):
    """Two users, three sessions, two versions, two environments, tags and feedback."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    a, b = token_client(alice), token_client(bob)

    def turn(client, message, *, version, env, team, session=None, request_id=None):
        settings.APP_VERSION, settings.APP_ENVIRONMENT = version, env
        settings.TRACE_TAGS = {"team": team}
        body = {"message": message, **({"session_id": session} if session else {})}
        headers = {"X-Request-ID": request_id} if request_id else {}
        response = client.post("/api/chat/", body, format="json", headers=headers)
        assert response.status_code == 200
        return response.json()

    t1 = turn(a, "alice one", version="1.4", env="production", team="support", request_id="req-a1")
    t2 = turn(
        a, "alice two", version="1.4", env="production", team="support", session=t1["session_id"]
    )
    t3 = turn(a, "alice new", version="1.5", env="staging", team="sales")
    t4 = turn(b, "bob one", version="1.4", env="production", team="support", request_id="req-b1")
    t5 = turn(b, "bob two", version="1.5", env="production", team="sales", session=t4["session_id"])

    def rate(client, t, **payload):
        url = f"/api/messages/{t['message_id']}/feedback/"
        assert client.put(url, payload, format="json").status_code == 201

    rate(a, t1, is_correct=False, expected_response="The right answer")
    rate(a, t3, is_correct=True)
    rate(b, t4, is_correct=False)
    rate(b, t5, rating=4)
    deliver_until_settled()
    find_traces()  # flush
    return {"alice": alice, "bob": bob, "turns": [t1, t2, t3, t4, t5]}


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` process of this test's own, which the test may stop and start."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.start()
    yield server
    server.stop()
