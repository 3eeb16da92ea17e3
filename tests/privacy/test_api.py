import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from chat import tracing
from privacy import services
from privacy.models import Erasure
from tests.conftest import token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_deleting_me_erases_me_and_my_token_stops_working(api, erasable):
    user_id = erasable["user"].pk

    response = api.delete("/api/me/", {"confirm": True}, format="json")

    assert response.status_code == 204, response.content
    assert api.get("/api/sessions/").status_code == 401
    assert not get_user_model().objects.filter(pk=user_id).exists()
    erasure = Erasure.objects.get()
    assert (erasure.via, erasure.requested_by_id) == ("self", user_id)
    # The request never calls MLflow: the feedback worker's chore finishes the erasure.
    assert erasure.state == "pending_mlflow" and len(tracing.user_trace_ids(user_id=user_id)) == 3
    (line,) = services.erasures_finish_due()
    assert line == f"erasure {erasure.pk}: completed, 3 traces removed"
    assert tracing.user_trace_ids(user_id=user_id) == []
    assert services.erasures_finish_due() == []


@pytest.mark.parametrize("body", [None, {}, {"confirm": False}, {"confirm": "yes"}, {"x": 1}])
def test_deleting_me_needs_an_explicit_confirmation(api, user, body):
    response = api.delete("/api/me/", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert get_user_model().objects.filter(pk=user.pk).exists()


def test_a_browser_session_is_signed_out(mlflow_experiment):
    user = UserFactory()
    client = APIClient(enforce_csrf_checks=False)
    client.force_login(user)
    assert client.delete("/api/me/", {"confirm": True}, format="json").status_code == 204
    assert client.get("/api/sessions/").status_code in (401, 403)


def test_deleting_me_without_credentials_is_401(db):
    assert APIClient().delete("/api/me/", {"confirm": True}, format="json").status_code == 401


def test_other_people_are_left_alone(api, other_user, mlflow_experiment):
    other = token_client(other_user)
    assert api.delete("/api/me/", {"confirm": True}, format="json").status_code == 204
    assert other.get("/api/sessions/").status_code == 200
