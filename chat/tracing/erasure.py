"""Erasing a person from MLflow: their traces (rows, spans, assessments, artifact files) and the
assessments they logged on other people's traces, then checking through search that none is left.

`MlflowClient.delete_traces` removes a trace's rows with its tags, metadata and assessments, but
not the files under its `mlflow.artifactLocation` (MLflow's own tracer writes
`traces/<id>/artifacts/traces.json` there). So the files go first, while the trace row still says
where they are; a retry after a crash between the two finds the folder from the experiment's
artifact root instead. Every step is safe to repeat.

MLflow is imported on first use (see `setup.mlflow_api`); every call here is in its tracing SDK,
so the delivery workers can take back a trace whose row an erasure deleted mid-write.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from chat.tracing.assessments import ASSESSMENT_KEY
from chat.tracing.errors import TrackingUnavailable, short
from chat.tracing.export import experiment_trace_ids
from chat.tracing.search import TraceQuery, trace_filter_string
from chat.tracing.setup import experiment_id, mlflow_api, tracking_uri

if TYPE_CHECKING:
    from mlflow.tracing.client import TracingClient

logger = logging.getLogger(__name__)

ARTIFACT_LOCATION_TAG = "mlflow.artifactLocation"
CHUNK = 100


@dataclass(frozen=True)
class TracesErased:
    traces: int
    artifacts: int


def _client() -> TracingClient:
    mlflow_api()
    from mlflow.tracing.client import TracingClient

    return TracingClient(tracking_uri())


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


def user_trace_ids(*, user_id: int) -> list[str]:
    """Every trace of the app's experiment whose `mlflow.trace.user` is this user id.

    Raises: TrackingUnavailable.
    """
    return experiment_trace_ids(filter_string=trace_filter_string(TraceQuery(user_id=user_id)))


def _infos(trace_ids: Sequence[str]) -> list:
    infos = []
    for chunk in _chunks(trace_ids):
        infos += _client().store.batch_get_trace_infos(chunk)
    return infos


def existing_trace_ids(trace_ids: Sequence[str]) -> list[str]:
    """Those of `trace_ids` the tracking store still has. Raises: TrackingUnavailable."""
    try:
        return [info.trace_id for info in _infos(list(dict.fromkeys(trace_ids)))]
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def _local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return uri
    return None


def _remove_artifacts(trace_id: str, location: str) -> bool:
    """Remove one trace's artifact folder; True if there was something to remove."""
    local = _local_path(location)
    if local is not None:
        # `.../traces/<id>/artifacts`: the `<id>` folder goes with it.
        folder = os.path.dirname(local) if os.path.basename(local) == "artifacts" else local
        if os.path.basename(folder) != trace_id:
            folder = local
        if not os.path.exists(folder):
            return False
        shutil.rmtree(folder)
        return True
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        repository = get_artifact_repository(location)
        if not repository.list_artifacts():
            return False
        repository.delete_artifacts()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    except Exception as exc:
        if "404" in str(exc):
            return False
        raise
    return True


def _experiment_traces_folder(exp_id: str) -> str | None:
    """Where a local store keeps its traces' files (to find them once the trace row is gone)."""
    local = _local_path(_client().store.get_experiment(exp_id).artifact_location)
    return os.path.join(local, "traces") if local else None


def erase_traces(
    *, trace_ids: Sequence[str], progress: Callable[[int, int], None] | None = None
) -> TracesErased:
    """Delete these traces from MLflow: artifact files first, then rows with their assessments.

    Traces MLflow no longer has are skipped, but their local artifact folder (if any is left
    under the app experiment's artifact root) is still removed.
    Raises: TrackingUnavailable.
    """
    trace_ids = list(dict.fromkeys(trace_ids))
    if not trace_ids:
        return TracesErased(0, 0)
    try:
        infos = _infos(trace_ids)
        by_experiment: dict[str, list[str]] = defaultdict(list)
        artifacts = 0
        for info in infos:
            location = (info.tags or {}).get(ARTIFACT_LOCATION_TAG)
            if location and _remove_artifacts(info.trace_id, location):
                artifacts += 1
            by_experiment[info.trace_location.mlflow_experiment.experiment_id].append(info.trace_id)
        found = {info.trace_id for info in infos}
        exp_id = experiment_id()
        missing = [t for t in trace_ids if t not in found]
        root = _experiment_traces_folder(exp_id) if missing and exp_id is not None else None
        for trace_id in missing if root else []:
            folder = os.path.join(root, trace_id)
            if os.path.isdir(folder):
                shutil.rmtree(folder)
                artifacts += 1
        deleted, done = 0, 0
        for exp, ids in by_experiment.items():
            for chunk in _chunks(ids):
                deleted += _client().delete_traces(experiment_id=exp, trace_ids=chunk)
                done += len(chunk)
                if progress:
                    progress(done, len(infos))
    except TrackingUnavailable:
        raise
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    logger.info("erased traces count=%s artifacts=%s", deleted, artifacts)
    return TracesErased(deleted, artifacts)


def _matching(info, *, source_id: str | None, key: str | None) -> list:
    return [
        a
        for a in (info.assessments or [])
        if (source_id is not None and a.source is not None and a.source.source_id == source_id)
        or (key is not None and (a.metadata or {}).get(ASSESSMENT_KEY) == key)
    ]


def erase_assessments(
    *, trace_ids: Sequence[str], source_id: str | None = None, key: str | None = None
) -> int:
    """Delete every assessment (valid or superseded) on these traces logged by `source_id` or
    tagged with feedback row `key`; returns how many. Traces MLflow lacks are skipped.

    Raises: TrackingUnavailable.
    """
    if source_id is None and key is None:
        raise ValueError("erase_assessments needs a source_id or a key")
    removed = 0
    try:
        mlflow = mlflow_api()
        from mlflow.exceptions import MlflowException

        for info in _infos(list(dict.fromkeys(trace_ids))):
            for assessment in _matching(info, source_id=source_id, key=key):
                try:
                    mlflow.delete_assessment(
                        trace_id=info.trace_id, assessment_id=assessment.assessment_id
                    )
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                removed += 1
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return removed


def remaining_assessments(
    *, trace_ids: Sequence[str], source_id: str | None = None, key: str | None = None
) -> int:
    """How many assessments by `source_id` (or tagged `key`) these traces still carry.

    Raises: TrackingUnavailable.
    """
    try:
        infos = _infos(list(dict.fromkeys(trace_ids)))
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return sum(len(_matching(info, source_id=source_id, key=key)) for info in infos)


def old_trace_ids(*, before_ms: int, limit: int) -> list[str]:
    """Up to `limit` of the app experiment's traces started before `before_ms`, oldest first.

    Retention deletes these a batch at a time, and calls it once more to check none is left.
    Raises: TrackingUnavailable.
    """
    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    try:
        page = _client().search_traces(
            locations=[exp_id],
            filter_string=trace_filter_string(TraceQuery(until_ms=int(before_ms))),
            order_by=["timestamp_ms ASC"],
            max_results=limit,
            include_spans=False,
        )
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return [trace.info.trace_id for trace in page]
