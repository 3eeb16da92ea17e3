"""What a web worker imports: never MLflow (`import mlflow` costs ~1.9 s and ~150 MB per
process), nor drf-spectacular's schema generator (~5 MB)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter, as a gunicorn worker: the app's settings, a turn, feedback, a health
# check, then the person erasing themselves (MLflow's part is the feedback worker's).
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    import chatproject.asgi, chatproject.workers  # what a uvicorn worker loads
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient
    client = APIClient()
    token = Token.objects.create(user=User.objects.create(username="lean"))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    chat = client.post("/api/chat/", {"message": "hi"}, format="json")
    streamed = client.post("/api/chat/", {"message": "more", "stream": True}, format="json")
    assert b"event: done" in b"".join(streamed)
    feedback = client.put(
        f"/api/messages/{chat.json()['message_id']}/feedback/", {"is_correct": True}, format="json"
    )
    health = client.get("/health/")
    erased = client.delete("/api/me/", {"confirm": True}, format="json")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "pandas", "numpy"))
    codes = [chat.status_code, feedback.status_code, health.status_code, erased.status_code]
    print(json.dumps([*codes, heavy[:5]]))
    """
)


def _run_as_a_web_worker(script: str, tmp_path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "imports-test",
        "DJANGO_DOT_ENV": "",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        # A tracking server (here: nobody listening) is reached over plain HTTP, never MLflow.
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "LOG_LEVEL": "ERROR",
    }
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_a_turn_feedback_health_check_and_erasure_import_no_mlflow(tmp_path):
    done = _run_as_a_web_worker(SCRIPT, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    chat, feedback, health, erased, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert (chat, feedback, health, erased) == (200, 201, 200, 204)
    assert heavy == []


def test_a_web_worker_loads_no_schema_generator(tmp_path):
    # drf-spectacular's generator imports django.test, jinja2 and unittest (chatproject.openapi).
    script = (
        "import json, sys\n"
        "import chatproject.asgi, chatproject.workers\n"
        "from django.urls import resolve\n"
        "resolve('/api/schema/'); resolve('/api/docs/')\n"
        "heavy = ('drf_spectacular.openapi', 'drf_spectacular.generators',"
        " 'drf_spectacular.views', 'chatproject.schema', 'django.test', 'jinja2')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = _run_as_a_web_worker(script, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
