"""The app as `make run` starts it, on loopback, in a temporary folder: for fault tests.

An `mlflow server`, gunicorn with gunicorn.conf.py, the trace and feedback delivery workers, an
SQLite app database of its own; each part can be stopped, killed or started again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.mlflow_server import MlflowServer, free_port

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class Stack:
    def __init__(self, root: Path, **env: str):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.mlflow = MlflowServer(root / "mlflow")
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "chatproject.settings",
            "DJANGO_SECRET_KEY": "fault-tests-only",
            "DATABASE_URL": f"sqlite:///{root}/db.sqlite3",
            "MLFLOW_TRACKING_URI": self.mlflow.url,
            "MLFLOW_EXPERIMENT_NAME": "fault-tests",
            "LLM_LOCAL_TOKEN_DELAY_MS": "0",
            "WEB_CONCURRENCY": "2",
            "TURN_ABANDONED_AFTER_S": "8",
            "TRACE_RETRY_MAX_S": "2",
            "FEEDBACK_RETRY_MAX_S": "2",
            "FEEDBACK_PROBE_INTERVAL_S": "1",
            # The load is a few users at many turns/s: capacity, not throttling, is under test.
            "THROTTLE_CHAT": "",
            "THROTTLE_FEEDBACK": "",
            **env,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.token = ""
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def start(self) -> None:
        self.mlflow.start()
        for args in (("migrate", "--noinput"), ("collectstatic", "--noinput", "-v0")):
            done = self.manage(*args)
            assert done.returncode == 0, done.stderr
        script = (
            "from django.contrib.auth.models import User;"
            "from rest_framework.authtoken.models import Token;"
            "u, _ = User.objects.get_or_create(username='load');"
            "print(Token.objects.get_or_create(user=u)[0].key)"
        )
        done = self.manage("shell", "-c", script)
        assert done.returncode == 0, done.stderr
        self.token = done.stdout.strip().splitlines()[-1]
        self.start_app()
        self.start_worker("deliver_traces")
        self.start_worker("deliver_feedback")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            args,
            cwd=REPO,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_app(self, timeout: float = 60.0) -> None:
        gunicorn = str(Path(PYTHON).with_name("gunicorn"))
        self._spawn(
            "app",
            [
                gunicorn,
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health/", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the app did not start; see {self.root / 'app.log'}")

    def start_worker(self, command: str) -> None:
        self._spawn(command, [PYTHON, "manage.py", command, "--loop"])

    def app_workers(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        master = self.processes["app"].pid
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def signal(self, name: str, sig: int) -> None:
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, sig) if sig == signal.SIGKILL else process.send_signal(sig)
        process.wait(timeout=60)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.mlflow.stop()

    # --- what a client does ---------------------------------------------------------------

    def headers(self, request_id: str | None = None) -> dict:
        headers = {"Authorization": f"Token {self.token}"}
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    def chat(self, request_id: str, message: str | None = None, timeout: float = 30.0):
        return self.http.post(
            f"{self.url}/api/chat/",
            json={"message": message or f"question {request_id}"},
            headers=self.headers(request_id),
            timeout=timeout,
        )

    def rate(self, message_id: int, is_correct: bool):
        return self.http.put(
            f"{self.url}/api/messages/{message_id}/feedback/",
            json={"is_correct": is_correct},
            headers=self.headers(),
            timeout=30,
        )

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health/", timeout=5) as response:
            return json.load(response)


@dataclass
class Load:
    """Turns sent at a steady rate from a few threads until stopped; records what was answered."""

    stack: Stack
    rate: float = 20.0
    prefix: str = "load"
    answered: dict[str, dict] = field(default_factory=dict)  # request id -> response body
    failed: dict[str, str] = field(default_factory=dict)  # request id -> status or error

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _one(self, request_id: str) -> None:
        try:
            response = self.stack.chat(request_id)
            outcome = response.json() if response.status_code == 200 else str(response.status_code)
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        with self._lock:
            if isinstance(outcome, dict):
                self.answered[request_id] = outcome
            else:
                self.failed[request_id] = outcome

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            started, n = time.monotonic(), 0
            while not self._stop.is_set():
                pool.submit(self._one, f"{self.prefix}-{n}")
                n += 1
                pause = started + n / self.rate - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
