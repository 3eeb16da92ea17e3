"""Against a tracking server the experiment is resolved over MLflow's REST API, with its auth."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chat import tracing


class FakeTrackingServer(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []
    experiments: dict[str, str] = {}

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(("GET", self.path, self.headers.get("Authorization")))
        name = self.path.partition("experiment_name=")[2]
        if (
            self.path.startswith("/api/2.0/mlflow/experiments/get-by-name")
            and name in self.experiments
        ):
            self._answer(200, {"experiment": {"experiment_id": self.experiments[name]}})
        else:
            self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})

    def do_POST(self):  # noqa: N802
        self.seen.append(("POST", self.path, self.headers.get("Authorization")))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.experiments[body["name"]] = "7"
        self._answer(200, {"experiment_id": "7"})

    def log_message(self, *args):
        pass


@pytest.fixture
def tracking_server():
    FakeTrackingServer.seen, FakeTrackingServer.experiments = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTrackingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_missing_experiment_is_created_over_rest_with_the_tracking_token(
    tracking_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    assert tracing.configure(tracking_uri=tracking_server, experiment_name="fresh") is True
    assert tracing.experiment_id() == "7"
    assert [(method, path.split("?")[0]) for method, path, _ in FakeTrackingServer.seen] == [
        ("GET", "/api/2.0/mlflow/experiments/get-by-name"),
        ("POST", "/api/2.0/mlflow/experiments/create"),
    ]
    assert {auth for _, _, auth in FakeTrackingServer.seen} == {"Bearer secret-token"}


def test_basic_auth_is_sent_when_a_username_is_set(tracking_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "app")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    FakeTrackingServer.experiments = {"known": "3"}
    assert tracing.configure(tracking_uri=tracking_server, experiment_name="known") is True
    assert tracing.experiment_id() == "3"
    assert FakeTrackingServer.seen[0][2] == "Basic YXBwOnB3"  # base64("app:pw")
    assert tracing.tracking_reachable() is False  # experiments/search is not served: not healthy
