"""bin/mlflow-server: MLflow's `mlflow server` as one process (bin/serve, benches, tests)."""

from pathlib import Path

import mlflow


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
