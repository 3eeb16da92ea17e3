"""The batch trace-info writer stores exactly what MLflow's own `start_trace` stores.

`chat.tracing.sqlstore` writes MLflow's tables itself (one transaction per batch instead of one
per trace). These tests write the same recorded traces both ways, into two fresh stores, and
compare every row of every table: an MLflow upgrade that changes what `start_trace` stores fails
here, not silently in production.
"""

import contextlib
import sqlite3

import pytest
import sqlalchemy
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from chat import selectors
from chat.models import TraceExport
from chat.tracing import export, sqlstore

pytestmark = pytest.mark.django_db

# Columns that differ between two stores written a moment apart, whatever wrote them.
CLOCK_COLUMNS = {"creation_time", "last_update_time"}


def _store(path, name: str) -> tuple[SqlAlchemyStore, str]:
    store = SqlAlchemyStore(f"sqlite:///{path / name}.db", str(path / "artifacts"))
    return store, store.create_experiment("chat")


def _rows(store: SqlAlchemyStore) -> dict[str, list[tuple]]:
    with store.engine.connect() as connection:
        tables = sqlalchemy.inspect(connection).get_table_names()
        found = {}
        for table in sorted(set(tables) - {"alembic_version"}):
            result = connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"'))
            keep = [i for i, column in enumerate(result.keys()) if column not in CLOCK_COLUMNS]
            found[table] = sorted((tuple(row[i] for i in keep) for row in result), key=repr)
    return found


def _recorded(turn_of, api, llm_server) -> list[dict]:
    """Real recorded traces: plain, joined to a caller's trace, with a long history, failed."""
    first = turn_of("Where is my parcel?")
    turn_of("And the refund?", session_id=first["session_id"])
    turn_of(
        "Called by a service", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    llm_server.mode = "error"
    failed = api.post("/api/chat/", {"message": "This one fails"}, format="json")
    assert failed.status_code >= 500
    payloads = selectors.trace_payloads(TraceExport.objects.order_by("id"))
    assert {p["state"] for p in payloads} == {"OK", "ERROR"}
    return payloads


@pytest.fixture
def recorded(settings, turn_of, api, llm_server):
    settings.TRACE_TAGS = {"team": "support", "tier": "gold"}
    return _recorded(turn_of, api, llm_server)


def _write_one_by_one(store, exp_id, payloads):
    for payload in payloads:
        info, spans = export.build(payload, exp_id)
        store.start_trace(info)
        store.log_spans(exp_id, spans)


def _write_batch(store, exp_id, payloads):
    built = [export.build(payload, exp_id) for payload in payloads]
    sqlstore.start_traces(store, [info for info, _ in built])
    store.log_spans(exp_id, [span for _, spans in built for span in spans])


def test_a_batch_stores_the_same_rows_as_mlflows_start_trace(tmp_path, recorded):
    theirs, their_exp = _store(tmp_path, "start_trace")
    ours, our_exp = _store(tmp_path, "batch")
    assert their_exp == our_exp  # so artifact locations and ids compare as they are

    _write_one_by_one(theirs, their_exp, recorded)
    _write_batch(ours, our_exp, recorded)

    expected, got = _rows(theirs), _rows(ours)
    assert expected["trace_info"], "nothing was written"
    assert len(expected["trace_request_metadata"]) >= 8 * len(recorded)  # user, session, ...
    assert got == expected


def test_the_trace_reads_back_whole_with_its_request_id_user_and_metadata(tmp_path, recorded):
    store, exp_id = _store(tmp_path, "batch")
    _write_batch(store, exp_id, recorded)

    for payload in recorded:
        trace = store.get_trace(payload["trace_id"])
        assert export._compare(trace, payload) == ""
        assert trace.info.client_request_id == payload["client_request_id"]
        assert trace.info.trace_metadata["mlflow.trace.user"] == payload["user"]
        assert trace.info.trace_metadata["mlflow.trace.session"] == payload["session"]


def test_writing_a_batch_again_or_partly_again_stores_what_mlflows_rewrite_stores(
    tmp_path, recorded
):
    """A deliverer killed mid-batch, a lease taken over, a repair: MLflow's own merge, once."""
    theirs, their_exp = _store(tmp_path, "start_trace")
    ours, our_exp = _store(tmp_path, "batch")
    for write, store, exp_id in (
        (_write_one_by_one, theirs, their_exp),
        (_write_batch, ours, our_exp),
    ):
        write(store, exp_id, recorded[:2])  # killed after part of a batch
        write(store, exp_id, recorded)  # the batch again: two rewritten, two new
        write(store, exp_id, recorded)

    got, expected = _rows(ours), _rows(theirs)
    assert len(got["trace_info"]) == len(recorded)
    assert len(got["spans"]) == sum(len(p["spans"]) for p in recorded)
    assert got == expected


def test_a_deleted_experiment_is_refused_as_start_trace_refuses_it(tmp_path, recorded):
    from mlflow.exceptions import MlflowException

    store, exp_id = _store(tmp_path, "deleted")
    store.delete_experiment(exp_id)
    infos = [export.build(payload, exp_id)[0] for payload in recorded]

    with pytest.raises(MlflowException) as refused:
        sqlstore.start_traces(store, infos)
    with pytest.raises(MlflowException) as theirs:
        store.start_trace(infos[0])
    assert refused.value.error_code == theirs.value.error_code
    assert _rows(store)["trace_info"] == []


def _mlflow_at_least(version: str) -> bool:
    import mlflow
    from packaging.version import Version

    return Version(mlflow.__version__) >= Version(version)


def test_a_trace_id_another_experiment_holds_is_refused_and_the_rest_is_stored(tmp_path, recorded):
    """A caller's trace id (traceparent) already stored by the caller in its own experiment."""
    from mlflow.exceptions import MlflowException

    store, exp_id = _store(tmp_path, "foreign")
    caller_exp = store.create_experiment("caller")
    foreign, *ours = recorded
    store.start_trace(export.build(foreign, caller_exp)[0])
    infos = [export.build(payload, exp_id)[0] for payload in recorded]

    refused = sqlstore.start_traces(store, infos)

    assert refused == {
        foreign["trace_id"]: f"Trace with ID '{foreign['trace_id']}' already exists in another "
        "experiment."
    }
    assert store.get_trace_info(foreign["trace_id"]).experiment_id == caller_exp
    for payload in ours:
        assert store.get_trace_info(payload["trace_id"]).experiment_id == exp_id
    if _mlflow_at_least("3.18"):
        # MLflow's own rule since 3.18 (3.17 moved the caller's trace into this experiment).
        with pytest.raises(MlflowException, match="already exists in another experiment"):
            store.start_trace(infos[0])


def test_a_trace_another_experiment_holds_is_retried_and_the_rest_of_its_batch_delivered(turn_of):
    from mlflow import MlflowClient
    from mlflow.tracing.client import TracingClient

    from chat import delivery

    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    joined = turn_of("Called by a service", traceparent=traceparent)
    plain = turn_of("Where is my parcel?")
    caller_exp = MlflowClient().create_experiment("the-calling-service")
    payload = selectors.trace_payloads(TraceExport.objects.filter(trace_id=joined["trace_id"]))[0]
    TracingClient().start_trace(export.build(payload, caller_exp)[0])

    assert delivery.trace_deliver_due() == {"exported": 1, "retry": 1}

    rows = {row.trace_id: row for row in TraceExport.objects.all()}
    assert rows[plain["trace_id"]].state == TraceExport.State.EXPORTED
    refused = rows[joined["trace_id"]]
    assert refused.state == TraceExport.State.PENDING
    assert "already exists in another experiment" in refused.last_error
    assert TracingClient().get_trace_info(joined["trace_id"]).experiment_id == caller_exp


def test_a_nul_in_a_preview_is_stored_as_a_replacement_character(tmp_path, recorded):
    """PostgreSQL's text columns refuse NUL: a model's reply with one must not fail the batch."""
    theirs, their_exp = _store(tmp_path, "start_trace")
    ours, our_exp = _store(tmp_path, "batch")
    recorded[0]["response_preview"] = "before\x00after"

    _write_batch(ours, our_exp, recorded[:1])

    stored = ours.get_trace_info(recorded[0]["trace_id"])
    assert stored.response_preview == "before\ufffdafter"
    if _mlflow_at_least("3.18"):  # MLflow's start_trace stores it the same way since 3.18
        _write_one_by_one(theirs, their_exp, recorded[:1])
        assert _rows(ours) == _rows(theirs)


def test_a_batch_that_fails_on_a_colliding_row_is_not_reported_stored(tmp_path, recorded):
    """A batch whose INSERT fails on a row collision, not a concurrent writer (here: a trace info
    read back from a store, whose artifact location tag the batch adds again) goes trace by
    trace through MLflow's own `start_trace`: each trace is stored or the error reaches the
    deliverer. Before, nothing of the batch was stored and no error was raised, so the
    deliverer marked the whole batch exported."""
    from mlflow.exceptions import MlflowException

    store, exp_id = _store(tmp_path, "collide")
    first, *rest = recorded
    store.start_trace(export.build(first, exp_id)[0])
    read_back = store.get_trace_info(first["trace_id"])
    read_back.trace_id = "tr-" + "0" * 31 + "1"
    infos = [export.build(payload, exp_id)[0] for payload in rest] + [read_back]

    with pytest.raises(MlflowException):
        sqlstore.start_traces(store, infos)

    for info in infos[:-1]:
        assert store.get_trace_info(info.trace_id).experiment_id == exp_id


def _search_plans(store, exp_id, filter_string: str) -> list[str]:
    """SQLite's plan for the query MLflow's `search_traces` runs for this filter."""
    statements = []

    def capture(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().startswith("SELECT trace_info.request_id"):
            statements.append((statement, params))

    sqlalchemy.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.search_traces(
            locations=[exp_id],
            filter_string=filter_string,
            max_results=50,
            order_by=["timestamp_ms DESC"],
        )
    finally:
        sqlalchemy.event.remove(store.engine, "before_cursor_execute", capture)
    (statement, params), *_ = statements
    # A connection of its own: a pooled one may hold the statement prepared before the indexes.
    with contextlib.closing(sqlite3.connect(store.engine.url.database)) as connection:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {statement}", params)
        return [row[3] for row in plan]


SEARCHES = {
    "user": ("metadata.`mlflow.trace.user` = '7'", "chat_trace_metadata_key_value"),
    "request id": ("attributes.client_request_id = 'req-1'", "chat_trace_info_client_request_id"),
}


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_a_search_by_user_or_request_id_is_an_index_lookup_not_a_walk_over_every_trace(
    tmp_path, search
):
    """Without the app's indexes SQLite walks every trace of the experiment for both searches,
    so they cost in proportion to the store (bench/store_scale.py); with them, a lookup."""
    filter_string, index = SEARCHES[search]
    store, exp_id = _store(tmp_path, "search")
    walk = _search_plans(store, exp_id, filter_string)
    assert not any(index in step for step in walk)
    assert any("index_trace_info_experiment_id_timestamp_ms" in step for step in walk)

    assert sqlstore.ensure_search_indexes(store)
    assert sqlstore.ensure_search_indexes(store)  # idempotent

    plan = _search_plans(store, exp_id, filter_string)
    assert any(f"USING INDEX {index}" in step for step in plan), plan
    assert not any("experiment_id_timestamp_ms" in step for step in plan), plan


def test_the_tracking_store_gets_the_search_indexes_when_the_app_configures_it(
    mlflow_experiment, settings
):
    store = SqlAlchemyStore(settings.MLFLOW_TRACKING_URI, "unused")
    with store.engine.connect() as connection:
        names = connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")
        names = {row[0] for row in names}
    assert {"chat_trace_metadata_key_value", "chat_trace_info_client_request_id"} <= names
