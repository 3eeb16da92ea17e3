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


def test_deleting_me_imports_no_mlflow_in_the_web_worker(tmp_path):
    """As tests/chat/test_tracing_imports.py for a turn: a fresh interpreter, a real request."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(
        """
        import json, sys
        import django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient
        client = APIClient()
        token = Token.objects.create(user=User.objects.create(username="leaving"))
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        client.post("/api/chat/", {"message": "hi"}, format="json")
        gone = client.delete("/api/me/", {"confirm": True}, format="json")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "pandas"))
        print(json.dumps([gone.status_code, heavy[:5]]))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "imports-test",
        "DJANGO_DOT_ENV": "",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "LOG_LEVEL": "ERROR",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status, heavy) == (204, [])
