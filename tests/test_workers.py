"""The gunicorn worker's process settings (chatproject/workers.py)."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatproject.workers import _freeze_loaded, _tune_gc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gc_state():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_what_a_worker_loaded_at_start_is_left_out_of_full_collections(gc_state):
    _freeze_loaded()

    assert gc.get_freeze_count() > 10_000  # Django, DRF and the app, out of the collector's way


def test_a_gc_threshold_collects_the_young_less_often(gc_state):
    older = gc.get_threshold()[1:]
    _tune_gc(50_000)

    assert gc.get_threshold() == (50_000, *older)


def test_no_gc_threshold_leaves_python_s_thresholds_alone(gc_state):
    before = gc.get_threshold()
    _tune_gc(0)

    assert gc.get_threshold() == before


def test_the_asgi_app_loads_the_model_client_before_its_first_request(tmp_path):
    # `import openai` is ~0.5 s of CPU: on the event loop under the first turns it stopped each
    # worker ~1 s at 1,000 users. A fresh interpreter, as a worker: load the app, take nothing.
    script = (
        "import sys, chatproject.asgi\n"
        "print('openai' in sys.modules, type(chatproject.asgi.get_chat_model()).__name__)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "warm-up-test",
        "DJANGO_DOT_ENV": "",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1",
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",  # nobody listening: nothing is called
        "LOG_LEVEL": "ERROR",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "OpenAICompatibleChat"]
