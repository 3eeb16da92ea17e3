"""Test settings: a throwaway MLflow store and the local LLM; nothing touches var/."""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key")
os.environ["DJANGO_DOT_ENV"] = ""  # never a developer's .env (servers the tests start inherit it)

from chatproject.settings import *  # noqa: E402,F403
from chatproject.settings import DATABASES  # noqa: E402

# Never the developer's exported store: a fresh one per test run.
_TMP = tempfile.mkdtemp(prefix="chat-tests-")
MLFLOW_TRACKING_URI = f"sqlite:///{_TMP}/mlflow.db"
MLFLOW_ARTIFACT_ROOT = f"{_TMP}/mlartifacts"
MLFLOW_EXPERIMENT_NAME = "chat-tests"
TRACING_ENABLED = True

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LLM_BASE_URL = ""
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_ROOT = f"{_TMP}/static"
os.makedirs(STATIC_ROOT, exist_ok=True)
FEEDBACK_RETRY_BASE_S = 0.2
FEEDBACK_RETRY_MAX_S = 1.0
FEEDBACK_DELIVERY_THREADS = 1  # tests share one in-transaction connection
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, like production: threads and processes share it (in-memory SQLite locks tables).
    DATABASES["default"]["TEST"] = {"NAME": f"{_TMP}/test-db.sqlite3"}
# Tests that count requests set their own rates; the rest must not trip over the defaults.
THROTTLE_RATES = dict.fromkeys(THROTTLE_RATES, "100000/min")  # noqa: F405
# Which turns get a second (blind) review depends on their ids: off, so a test's single label
# settles its turn; tests of double review turn it on.
REVIEW_DOUBLE_SHARE = 0.0
# In-process requests share the test's event loop with whatever the test does: only the tests of
# load shedding by event-loop lag turn it on (served tests run with the production default).
CHAT_MAX_LOOP_LAG_MS = 0
