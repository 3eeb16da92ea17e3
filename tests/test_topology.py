"""The production topology of docs/deploy.md, tried on loopback.

One PostgreSQL cluster (the app's database and, in a second database, the tracking server's),
one `mlflow server` on it with an artifact folder, two app instances (gunicorn), two trace and
two feedback delivery workers against that one database. Turns and feedback go to both
instances; every turn must end up as exactly one trace in MLflow and every feedback as exactly
one valid assessment, with no row delivered twice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PGBINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
# The delivery workers run on the tracing SDK's environment when `make` has made it.
SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"
WORKER_PYTHON = str(SDK_PYTHON) if SDK_PYTHON.exists() else PYTHON
TURNS = 40


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.getuid() == 0 else args


@pytest.fixture
def postgres():
    """A throwaway cluster on loopback (as bin/with-postgres starts one); its URL."""
    if not PGBINS:
        pytest.skip("Debian's postgresql is not installed (.ci/run installs it)")
    pgbin = PGBINS[-1]
    root = Path(tempfile.mkdtemp(prefix="chat-topology-pg-"))
    if os.getuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([f"{pgbin}/initdb", "-D", f"{root}/data", "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                f"{pgbin}/pg_ctl",
                "-D",
                f"{root}/data",
                "-l",
                f"{root}/server.log",
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            conn.autocommit = True
            conn.execute("CREATE DATABASE chat")
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([f"{pgbin}/pg_ctl", "-D", f"{root}/data", "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


class Processes:
    def __init__(self, root: Path):
        self.root = root
        self.running: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, args: list[str], env: dict) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.running[name] = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, name: str, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} did not start: {self.log(name)}")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in reversed(self.running.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_two_instances_and_two_of_each_worker_deliver_every_turn_and_feedback_once(
    postgres, tmp_path
):
    mlflow_port, ports = free_port(), [free_port(), free_port()]
    tracking = f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_DOT_ENV": "",
        "DJANGO_SECRET_KEY": "topology-test-only",
        "DATABASE_URL": f"postgres://{postgres}/chat",
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_EXPERIMENT_NAME": "topology",
        "LLM_LOCAL_TOKEN_DELAY_MS": "0",
        "WEB_CONCURRENCY": "1",
        "THROTTLE_CHAT": "",
        "THROTTLE_FEEDBACK": "",
        "FEEDBACK_PROBE_INTERVAL_S": "1",
        # Small batches, so the two trace workers share the turns instead of one taking all.
        "TRACE_DELIVERY_BATCH": "4",
        "LOG_LEVEL": "INFO",
    }
    procs = Processes(tmp_path)
    try:
        procs.spawn(
            "mlflow",
            [
                str(Path(PYTHON).with_name("mlflow")),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"postgresql+psycopg://{postgres}/mlflow",
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
            ],
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        manage = [PYTHON, "manage.py"]
        done = subprocess.run(
            [*manage, "migrate", "--noinput"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        script = (
            "from django.contrib.auth.models import User;"
            "from rest_framework.authtoken.models import Token;"
            "u = User.objects.create(username='topology');"
            "print(Token.objects.create(user=u).key)"
        )
        done = subprocess.run(
            [*manage, "shell", "-c", script], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        procs.wait_healthy("mlflow", f"{tracking}/health")

        gunicorn = str(Path(PYTHON).with_name("gunicorn"))
        for i, port in enumerate(ports):
            procs.spawn(
                f"app{i}",
                [gunicorn, "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"],
                {**env, "DEPLOYMENT_ID": f"app{i}"},
            )
        procs.spawn(
            "deliver_traces0", [WORKER_PYTHON, "manage.py", "deliver_traces", "--loop"], env
        )
        for i in range(2):
            procs.spawn(
                f"deliver_feedback{i}",
                [WORKER_PYTHON, "manage.py", "deliver_feedback", "--loop"],
                env,
            )
        for i, port in enumerate(ports):
            procs.wait_healthy(f"app{i}", f"http://127.0.0.1:{port}/health/")
        # The second trace worker writes into the tracking server's database itself (batches of
        # trace infos in one transaction, chat/tracing/sqlstore.py), beside the first one's REST
        # writes: both ways at once, on one experiment (the apps have made it by now).
        procs.spawn(
            "deliver_traces1",
            [PYTHON, "manage.py", "deliver_traces", "--loop"],
            {**env, "MLFLOW_TRACKING_URI": f"postgresql+psycopg://{postgres}/mlflow"},
        )
        deadline = time.monotonic() + 60  # the full package takes a few seconds to import
        while "trace worker polling" not in procs.log("deliver_traces1"):
            assert time.monotonic() < deadline, procs.log("deliver_traces1")
            time.sleep(0.2)

        http = requests.Session()
        headers = {"Authorization": f"Token {token}"}

        def turn(n: int) -> tuple[str, int, bool]:
            base = f"http://127.0.0.1:{ports[n % 2]}"
            other = f"http://127.0.0.1:{ports[(n + 1) % 2]}"
            reply = http.post(
                f"{base}/api/chat/",
                json={"message": f"question {n}"},
                headers={**headers, "X-Request-ID": f"topo-{n}"},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            # Feedback through the other instance; every third turn's vote is changed there too.
            url = f"{other}/api/messages/{body['message_id']}/feedback/"
            rated = http.put(url, json={"is_correct": True}, headers=headers, timeout=30)
            assert rated.status_code == 201, rated.text
            final = True
            if n % 3 == 0:
                final = False
                changed = http.put(
                    f"{base}/api/messages/{body['message_id']}/feedback/",
                    json={"is_correct": final},
                    headers=headers,
                    timeout=30,
                )
                assert changed.status_code == 200, changed.text
            return body["trace_id"], n, final

        with ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(turn, range(TURNS)))

        deadline = time.monotonic() + 60
        while True:
            health = http.get(f"http://127.0.0.1:{ports[0]}/health/", timeout=10).json()
            waiting = health["traces"]["pending"] + health["feedback"]["pending"]
            if not waiting:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        assert health["traces"]["failed"] == 0 and health["feedback"]["failed"] == 0, health
        assert health["traces"]["exported"] == TURNS and health["feedback"]["delivered"] == TURNS

        import psycopg

        with psycopg.connect(f"postgresql://{postgres}/chat") as conn:
            # One claim per row: no trace was written by two deliverers.
            attempts = conn.execute("SELECT attempts, count(*) FROM chat_traceexport GROUP BY 1")
            assert dict(attempts.fetchall()) == {1: TURNS}
            by_owner = conn.execute("SELECT count(*) FROM chat_traceexport WHERE lease_owner <> ''")
            assert by_owner.fetchone()[0] == 0

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking)
        experiment = client.get_experiment_by_name("topology").experiment_id
        infos = [
            t.info
            for t in client.search_traces(
                locations=[experiment], max_results=500, include_spans=False
            )
        ]
        by_request = {}
        for info in infos:
            by_request.setdefault(info.client_request_id, []).append(info)
        assert sorted(by_request) == sorted(f"topo-{n}" for n in range(TURNS))
        assert all(len(found) == 1 for found in by_request.values())
        assert {info.trace_metadata["deployment_id"] for info in infos} == {"app0", "app1"}

        for trace_id, n, final in sent:
            (info,) = by_request[f"topo-{n}"]
            assert info.trace_id == trace_id
            feedback = [a for a in info.assessments or [] if a.feedback is not None]
            valid = [a for a in feedback if a.valid is not False]
            assert [a.feedback.value for a in valid] == [final], (n, feedback)
            # Rated once: one assessment in all. Changed: at most the original and its override
            # (a vote changed before it was delivered is delivered once, with its final value).
            assert len(feedback) <= (2 if n % 3 == 0 else 1), (n, feedback)

        # The operator's commands work from the workers' environment (the tracing SDK) too.
        for args in (
            ["audit_traces"],
            ["traces", "search", "--user", "topology", "--format", "json"],
        ):
            done = subprocess.run(
                [WORKER_PYTHON, "manage.py", *args],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert done.stdout.count("topo-") == TURNS, done.stdout[-2000:]

        for name in ("deliver_traces0", "deliver_traces1"):  # each wrote some, its own way
            assert re.search(r"trace delivery: exported [1-9]", procs.log(name)), procs.log(name)
        for name in procs.running:
            if name.startswith("deliver"):
                assert "Traceback" not in procs.log(name), procs.log(name)
    finally:
        procs.stop()
