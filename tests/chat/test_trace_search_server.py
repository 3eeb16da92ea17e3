"""Trace search against a running `mlflow server` (REST store), as in production."""

import pytest

from chat import tracing
from tests.conftest import deliver_traces, token_client
from tests.factories import UserFactory
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_search_through_a_tracking_server(tmp_path, staff_api, deliver_until_settled):
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        assert tracing.configure(tracking_uri=server.url, experiment_name="search")
        carol, dave = UserFactory(username="carol"), UserFactory(username="dave")
        c, d = token_client(carol), token_client(dave)
        mine = [c.post("/api/chat/", {"message": f"c{i}"}, format="json").json() for i in range(3)]
        theirs = d.post("/api/chat/", {"message": "d"}, format="json").json()
        url = f"/api/messages/{mine[0]['message_id']}/feedback/"
        c.put(url, {"is_correct": False}, format="json")
        deliver_until_settled()
        deliver_traces()

        def found(params):
            response = staff_api.get("/api/traces/", params)
            assert response.status_code == 200, response.content
            return {t["trace_id"] for t in response.json()["results"]}

        assert found({"user": "carol"}) == {t["trace_id"] for t in mine}
        assert found({"user": "dave"}) == {theirs["trace_id"]}
        assert found({"session": mine[1]["session_id"]}) == {mine[1]["trace_id"]}
        assert found({"feedback": "response_is_correct:false"}) == {mine[0]["trace_id"]}
        assert found({"user": "carol' OR '1'='1"}) == set()
        assert staff_api.get("/api/traces/", {"tag": "team:x' OR 'a'='a"}).status_code == 400

        server.stop()
        down = staff_api.get("/api/traces/", {"user": "carol"})
        assert down.status_code == 503 and down.json()["error"] == "traces_unavailable"
    finally:
        server.stop()
