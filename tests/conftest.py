import uuid

import mlflow
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import tracing
from tests.factories import UserFactory
from tests.llm_server import FakeOpenAIServer


@pytest.fixture(autouse=True)
def mlflow_experiment():
    """Each test traces into its own experiment of the run's throwaway SQLite store."""
    from django.conf import settings

    assert tracing.configure(
        tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=f"test-{uuid.uuid4().hex}"
    )
    return tracing.experiment_id()


@pytest.fixture
def find_traces(mlflow_experiment):
    """Traces of this test's experiment matching an MLflow filter string (queue flushed first)."""

    def find(filter_string: str | None = None) -> list:
        tracing.flush()
        return mlflow.MlflowClient().search_traces(
            experiment_ids=[mlflow_experiment], filter_string=filter_string, max_results=500
        )

    return find


@pytest.fixture
def get_trace():
    def get(trace_id: str):
        tracing.flush()
        return mlflow.MlflowClient().get_trace(trace_id)

    return get


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


def _token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    """An API client signed in as `user` with a real DRF token."""
    return _token_client(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return _token_client(other_user)


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
        while selectors.feedback_pending().exists():
            assert time.monotonic() < deadline, list(
                selectors.feedback_pending().values("id", "attempts", "last_error")
            )
            services.feedback_deliver_due()
            time.sleep(0.1)

    return run


@pytest.fixture
def assessments():
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
