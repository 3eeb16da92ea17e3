"""bin/mlflow-server: MLflow's `mlflow server` as one process (bin/serve, benches, tests)."""

from pathlib import Path

import mlflow
import pytest


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_tracking_server_is_one_process_that_serves(mlflow_server):
    pid = mlflow_server.process.pid
    # MLflow's CLI became the server: no parent waiting beside a uvicorn child.
    assert "uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
    assert _children(pid) == []

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    experiment_id = client.create_experiment("launcher")
    assert client.get_experiment(experiment_id).name == "launcher"

    mlflow_server.stop()  # SIGTERM to its group stops it, nothing left behind
    assert mlflow_server.process.poll() is not None
    assert not Path(f"/proc/{pid}").exists()


def _launcher():
    import importlib.machinery
    import importlib.util

    from tests.mlflow_server import LAUNCHER

    loader = importlib.machinery.SourceFileLoader("mlflow_server_launcher", str(LAUNCHER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_mlflow_launches_its_server_through_the_private_function_the_launcher_swaps(
    tmp_path, monkeypatch
):
    """Fails at once when an MLflow upgrade renames `server._exec_cmd` or calls it otherwise."""
    import os
    import subprocess

    from mlflow import server

    class Became(Exception):
        pass

    became = []

    def execve(path, argv, env):
        became.append((path, argv, env))
        raise Became

    launcher = _launcher()
    monkeypatch.setattr(server, "_exec_cmd", server._exec_cmd)  # undone after the test
    monkeypatch.setattr(os, "execve", execve)

    def popen(*args, **kwargs):  # a server started some other way fails here, not in a hang
        raise AssertionError(f"MLflow started a process the launcher does not become: {args}")

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    args = ["--host", "127.0.0.1", "--port", "5999", "--workers", "1"]
    store = [
        f"--backend-store-uri=sqlite:///{tmp_path}/m.db",
        f"--artifacts-destination={tmp_path}",
    ]
    with pytest.raises(Became):  # MLflow called it, and it became the server
        launcher.main(args + store)

    assert len(became) == 1, "MLflow no longer starts its server through server._exec_cmd"
    path, argv, env = became[0]
    assert argv[0] == path and os.access(path, os.X_OK)
    assert "uvicorn" in " ".join(argv) and "5999" in argv
    assert env["_MLFLOW_SGI_NAME"] == "uvicorn"  # MLflow's environment for the server reached it


def test_any_other_command_mlflow_runs_through_it_runs_as_before(monkeypatch):
    from mlflow import server

    launcher = _launcher()
    calls = []
    monkeypatch.setattr(launcher, "_spawn", lambda command, **kw: calls.append((command, kw)))

    launcher._become(["echo", "hi"], extra_env={"A": "1"})

    assert calls == [
        (["echo", "hi"], {"extra_env": {"A": "1"}, "capture_output": True, "synchronous": True})
    ]
    assert server._exec_cmd is not launcher._become
