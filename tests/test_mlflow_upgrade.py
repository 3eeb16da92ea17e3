"""A tracking store made by the MLflow release we upgrade from, upgraded and then used.

tests/fixtures/mlflow-3.17.2.sql is a store that MLflow 3.17.2 wrote (schema at its last
revision, one traced turn with metadata, tags, spans, a feedback and an expectation), dumped by
tests/fixtures/make_mlflow_store.py. A SQL dump rather than a second MLflow in a throwaway
environment: it is the store itself, byte for byte what 3.17.2 left, with no install in CI.
The test loads it, runs `mlflow db upgrade` with the installed MLflow (the release job in
docs/deploy.md), then uses it as production does: the trace worker writes turns straight into
the store (chat/tracing/sqlstore.py), the feedback worker logs assessments, and
bin/mlflow-server serves the old and the new traces together.
"""

import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chat import tracing
from tests.conftest import deliver_traces
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

FIXTURE = Path(__file__).parent / "fixtures" / "mlflow-3.17.2.sql"
REVISION_3_17_2 = "dc11669786a5"
OLD_TRACE_USER = "7"


def _revision(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _installed_head(uri: str) -> str:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(uri)).get_current_head()


def test_a_store_made_by_mlflow_3_17_2_is_upgraded_and_then_used(
    tmp_path, settings, api, turn_of, deliver_until_settled
):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(FIXTURE.read_text().replace("@STORE@", str(tmp_path)))
    uri = f"sqlite:///{db}"
    assert _revision(db) == REVISION_3_17_2
    head = _installed_head(uri)

    # (Without this, 3.18's SqlAlchemyStore would run the migrations itself on first contact,
    # as it finds its new tables missing; docs/deploy.md says why the release job does it.)
    subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], check=True)
    assert _revision(db) == head

    # The trace worker writes into the upgraded store itself; the feedback worker rates it.
    assert tracing.configure(tracking_uri=uri, experiment_name="chat-app")
    first = turn_of("Where is my parcel?")
    second = turn_of("And the refund?", **{"X-Session-ID": first["session_id"]})
    rated = api.put(
        f"/api/messages/{second['message_id']}/feedback/",
        {"is_correct": False, "comment": "no refund date"},
        format="json",
    )
    assert rated.status_code in (200, 201), rated.content
    deliver_until_settled()

    server = MlflowServer(tmp_path)  # serves tmp_path/mlflow.db, the upgraded store
    server.start()
    try:
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name("chat-app")
        old = client.search_traces(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"metadata.`mlflow.trace.user` = '{OLD_TRACE_USER}'",
        )
        assert len(old) == 1
        old_trace = client.get_trace(old[0].info.trace_id)
        assert old_trace.info.client_request_id == "req-upgrade-1"
        assert old_trace.info.tags["team"] == "support"
        assert [span.name for span in old_trace.data.spans] == ["chat_turn", "llm"]
        assert {a.name for a in old_trace.info.assessments} == {
            "response_is_correct",
            "expected_response",
        }
        # 3.17.2's feedback can still be superseded as the feedback worker does it.
        kept = next(a for a in old_trace.info.assessments if a.name == "response_is_correct")
        mlflow.set_tracking_uri(server.url)
        mlflow.override_feedback(
            trace_id=old_trace.info.trace_id, assessment_id=kept.assessment_id, value=True
        )
        votes = client.get_trace(old_trace.info.trace_id).info.assessments
        assert sorted(
            (a.feedback.value, a.valid) for a in votes if a.name == "response_is_correct"
        ) == [(False, False), (True, True)]

        ours = client.search_traces(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"metadata.`mlflow.trace.session` = '{first['session_id']}'",
        )
        assert {t.info.trace_id for t in ours} == {first["trace_id"], second["trace_id"]}
        rated_trace = client.get_trace(second["trace_id"])
        assert len(rated_trace.data.spans) >= 2
        feedback = [a for a in rated_trace.info.assessments if a.name == "response_is_correct"]
        assert [a.feedback.value for a in feedback] == [False]
    finally:
        server.stop()
    deliver_traces()
