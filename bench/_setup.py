"""Boot Django on a throwaway SQLite database and MLflow store for a benchmark run."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def boot_django() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DJANGO_SECRET_KEY="bench-only",
        DJANGO_DOT_ENV="",
        DATABASE_URL=f"sqlite:///{tmp}/db.sqlite3",
        MLFLOW_TRACKING_URI=os.environ.get(
            "BENCH_MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db"
        ),
        MLFLOW_ARTIFACT_ROOT=str(tmp / "mlartifacts"),
        MLFLOW_EXPERIMENT_NAME="bench",
        LOG_LEVEL="WARNING",
        DJANGO_ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        # One user at full speed: the per-user throttle would answer 429 after 30 turns.
        THROTTLE_CHAT="",
        THROTTLE_FEEDBACK="",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return tmp


def token_client(username: str):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user, _ = get_user_model().objects.get_or_create(username=username)
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return user, client


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
