"""Many trace infos in one transaction, for a deliverer that writes to MLflow's SQL store itself.

MLflow has no batch call for trace infos: `start_trace` is one call, one transaction and one
experiment lookup per trace, about 10 ms of CPU in-process and 24 ms through `mlflow server`
(docs/tracing.md, "Levers measured"). A deliverer given the tracking store's database URI (the
server's `--backend-store-uri`, typically PostgreSQL) writes a whole batch here instead: the
rows `SqlAlchemyStore._start_trace_once` writes for a new trace (trace info, tags, metadata, the
finalised marker, the rollup invalidation), built with the store's own helpers, one INSERT per
table. A trace that already exists (a rewrite after a crash, a repair) goes through the store's
own `start_trace`, whose merge path this does not repeat, and so does the whole batch when a
concurrent writer inserted one of its traces first.

This writes MLflow's tables through MLflow's own models, so it is tied to the MLflow version in
constraints.txt: `tests/chat/test_sqlstore.py` writes the same traces both ways and compares
every row, and fails on an upgrade that changes what `start_trace` stores. It holds on 3.17.2
and 3.18.0 (whose trace tables are the same), with 3.18's two new rules on any version: a trace
id already stored in another experiment is refused (3.17's `start_trace` moved that trace into
the caller's experiment), and a NUL in a preview is stored as U+FFFD (PostgreSQL refuses NUL).
Needs the full `mlflow` package (the SDK has no SQL store); imported only when used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import TraceInfo
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore


def is_sql_store(store: object) -> bool:
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # MLflow's tracing SDK: it has no SQL store (nor SQLAlchemy) at all
        return False
    return isinstance(store, SqlAlchemyStore)


def start_traces(store: SqlAlchemyStore, infos: Sequence[TraceInfo]) -> dict[str, str]:
    """Store these trace infos (one experiment) as `store.start_trace` would, in one transaction.

    Returns {trace_id: why} for the traces refused: those whose id another experiment already
    holds (MLflow 3.18 refuses them too, and refuses their spans). The rest are stored.
    Raises: MlflowException as `start_trace` does (no such experiment, a deleted one).
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import IntegrityError

    if not infos:
        return {}
    experiment_ids = {info.experiment_id for info in infos}
    if len(experiment_ids) != 1:
        raise ValueError(f"one experiment per batch, got {sorted(experiment_ids)}")
    experiment = store.get_experiment(experiment_ids.pop())
    store._check_experiment_is_active(experiment)
    batch_failed = False
    try:
        existing = _insert_new(store, experiment, infos)
    except MlflowException as exc:  # the store's session wraps SQLAlchemy's errors
        if not isinstance(exc.__cause__, IntegrityError):
            raise
        # Another writer inserted one of these meanwhile (or a row of the batch collides some
        # other way): the store's own path, trace by trace, for every trace of the batch.
        batch_failed = True
        with store.ManagedSessionMaker() as session:
            existing = _stored_in(session, [info.trace_id for info in infos])
    refused = {}
    for info in infos:
        if info.trace_id not in existing:
            if batch_failed:  # the batch's INSERTs were rolled back: nothing of it is stored
                store.start_trace(info)
            continue
        if existing[info.trace_id] != str(experiment.experiment_id):
            refused[info.trace_id] = (
                f"Trace with ID '{info.trace_id}' already exists in another experiment."
            )
            continue
        store.start_trace(info)
    return refused


def _stored_in(session, trace_ids: Sequence[str]) -> dict[str, str]:
    """{trace_id: experiment_id} of those of these traces the store holds."""
    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo

    rows = session.query(SqlTraceInfo.request_id, SqlTraceInfo.experiment_id).filter(
        SqlTraceInfo.request_id.in_(trace_ids)
    )
    return {trace_id: str(experiment_id) for trace_id, experiment_id in rows}


def _preview(text: str | None) -> str | None:
    # As MLflow 3.18's start_trace stores it: PostgreSQL's text columns cannot hold NUL, and one
    # would fail the whole batch's transaction.
    return text.replace("\x00", "\ufffd") if text else text


def _insert_new(store: SqlAlchemyStore, experiment, infos: Sequence[TraceInfo]) -> dict[str, str]:
    """Insert the traces not stored yet; returns {trace_id: experiment_id} of those that were."""
    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo, SqlTraceMetadata, SqlTraceTag
    from mlflow.store.tracking.utils.sql_trace_rollups import (
        RollupFamily,
        enqueue_rollup_rebuild_partitions,
    )
    from mlflow.store.tracking.utils.trace_analytics import (
        PROMOTED_TRACE_METADATA_KEYS,
        analytics_columns_from_metadata,
        validate_trace_name,
    )
    from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey
    from sqlalchemy import insert

    ids = [info.trace_id for info in infos]
    with store.ManagedSessionMaker(read_only=False) as session:
        existing = _stored_in(session, ids)
        new = [info for info in infos if info.trace_id not in existing]
        if not new:
            return existing
        experiment_id = int(experiment.experiment_id)
        enqueue_rollup_rebuild_partitions(
            session,
            [
                (family, experiment_id, [info.request_time for info in new])
                for family in (RollupFamily.TRACE_METRIC, RollupFamily.ASSESSMENT)
            ],
        )
        traces, tags, metadata_rows = [], [], []
        for info in new:
            trace_id = info.trace_id
            metadata = dict(info.trace_metadata.items())
            traces.append(
                {
                    "request_id": trace_id,
                    "experiment_id": info.experiment_id,
                    "timestamp_ms": info.request_time,
                    "execution_time_ms": info.execution_duration,
                    "status": info.state.value,
                    "client_request_id": info.client_request_id,
                    "request_preview": _preview(info.request_preview),
                    "response_preview": _preview(info.response_preview),
                    "trace_name": validate_trace_name(info.tags.get(TraceTagKey.TRACE_NAME)),
                    **analytics_columns_from_metadata(metadata),
                }
            )
            location = store._get_trace_artifact_location_tag(experiment, trace_id)
            tags += [
                {"request_id": trace_id, "key": key, "value": value}
                for key, value in info.tags.items()
                if key != TraceTagKey.TRACE_NAME
            ]
            tags.append({"request_id": trace_id, "key": location.key, "value": location.value})
            for key in PROMOTED_TRACE_METADATA_KEYS:
                metadata.pop(key, None)
            metadata[TraceMetadataKey.TRACE_INFO_FINALIZED] = "true"
            metadata_rows += [
                {"request_id": trace_id, "key": key, "value": value}
                for key, value in sorted(metadata.items())
            ]
        session.execute(insert(SqlTraceInfo), traces)
        session.execute(insert(SqlTraceTag), tags)
        session.execute(insert(SqlTraceMetadata), metadata_rows)
    return existing


# Indexes this app adds to MLflow's trace tables, for the two searches its staff run most: by user
# (``metadata.`mlflow.trace.user` = '7'``) and by request id (``attributes.client_request_id =
# 'req-1'``). MLflow 3.17 indexes neither: its plan walks every trace of the experiment and probes
# each one's metadata (or reads its request id), so both cost grows with the store (400 and 170 ms
# at 100k traces against 12 and 7 ms at 1k, bench/store_scale.py). Named `chat_*` so they read as
# ours; `CREATE INDEX IF NOT EXISTS`, so any process may ask for them any number of times. The
# request-id index ends with the time: with only (experiment, request id), SQLite still prefers
# MLflow's (experiment, time) index for the search's `ORDER BY timestamp_ms` and reads every trace.
#
# PostgreSQL refuses a B-tree entry over ~2.7 kB and a metadata value may be up to 8,000
# characters, so there the metadata index is a hash index on the value (equality only, no size
# limit; a partial index on the user key would be lost to the generic plans psycopg 3's prepared
# statements get). SQLite has no such limit, and its planner cannot use a partial index for
# MLflow's bound `key = ?`, so there it is a B-tree on (key, value).
SEARCH_INDEXES = {
    "sqlite": [
        "CREATE INDEX IF NOT EXISTS chat_trace_metadata_key_value "
        "ON trace_request_metadata (key, value)",
        "CREATE INDEX IF NOT EXISTS chat_trace_info_client_request_id "
        "ON trace_info (experiment_id, client_request_id, timestamp_ms)",
    ],
    "postgresql": [
        "CREATE INDEX IF NOT EXISTS chat_trace_metadata_value "
        "ON trace_request_metadata USING hash (value)",
        "CREATE INDEX IF NOT EXISTS chat_trace_info_client_request_id "
        "ON trace_info (experiment_id, client_request_id, timestamp_ms)",
    ],
}


def ensure_search_indexes(store: SqlAlchemyStore) -> list[str]:
    """Create the indexes the app's trace searches need in the store's database, if missing.

    Returns the statements run (none for a dialect this does not know, e.g. MySQL). On a large
    existing store the first run builds the indexes (on SQLite about 10 s per million traces
    here), holding the write lock meanwhile (`configure()` runs it, at start-up).
    """
    from sqlalchemy import text

    statements = SEARCH_INDEXES.get(store.engine.dialect.name, [])
    with store.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    return statements
