"""Production traces with corrected answers as an MLflow evaluation dataset.

Needs the full `mlflow` package (`mlflow.genai.datasets` is not in the tracing SDK): the
`export_eval_dataset` command runs in the full environment (.venv), never in .venv-sdk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from chat.tracing.assessments import EXPECTATION_NAME
from chat.tracing.errors import TrackingUnavailable, short
from chat.tracing.setup import experiment_id, mlflow_api


def merge_into_eval_dataset(
    *, name: str, trace_ids: list[str], batch: int = 50, progress=None
) -> int:
    """Merge these traces (inputs, outputs, expectations) into the named evaluation dataset.

    MLflow keys records by their inputs, so merging the same traces again adds nothing.
    Returns the dataset's record count. Raises: TrackingUnavailable.
    """
    # Imported here: the datasets module pulls in pandas, and only exports need it.
    mlflow = mlflow_api()
    from mlflow.exceptions import MlflowException
    from mlflow.genai import datasets

    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    client = mlflow.MlflowClient()
    try:
        try:
            dataset = datasets.get_dataset(name=name)
        except MlflowException:
            dataset = datasets.create_dataset(name=name, experiment_id=exp_id)
        for start in range(0, len(trace_ids), batch):
            chunk = [client.get_trace(t, display=False) for t in trace_ids[start : start + batch]]
            own = [t for t in chunk if t.data._get_root_span() is not None]
            joined = [_joined_record(t) for t in chunk if t.data._get_root_span() is None]
            for records in (own, joined):
                if records:
                    dataset.merge_records(records)
            if progress:
                progress(min(start + batch, len(trace_ids)), len(trace_ids))
        return len(datasets.get_dataset(name=name).to_df())
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def _joined_record(trace) -> dict:
    """The record of a trace that joined a caller's trace, as MLflow makes one from a trace.

    Its root span's parent is the caller's span, in another service: MLflow finds no root span
    and would record empty inputs, so every such turn would collapse into one record.
    """
    span_ids = {span.span_id for span in trace.data.spans}
    root = next(span for span in trace.data.spans if span.parent_id not in span_ids)
    source = {"trace_id": trace.info.trace_id}
    if session := trace.info.trace_metadata.get("mlflow.trace.session"):
        source["session_id"] = session
    return {
        "inputs": root.inputs or {},
        "outputs": root.outputs,
        "expectations": {a.name: a.value for a in trace.search_assessments(type="expectation")},
        "source": {"source_type": "TRACE", "source_data": source},
    }


# --- Versioned datasets (the `evals` app): one MLflow dataset per frozen version ----------------

VERSION_TAG_PREFIX = "tag."


@dataclass(frozen=True)
class VersionRecord:
    """One record of a frozen dataset version, as the app holds it."""

    key: str
    messages: list[dict]
    expectation: str
    trace_id: str = ""
    turn_id: int | None = None
    corrected_by: int | None = None
    corrected_at: str = ""


@dataclass(frozen=True)
class VersionSynced:
    dataset_id: str
    name: str
    records: int  # what MLflow holds now (records with equal inputs are one record there)


def version_dataset_name(dataset: str, number: int) -> str:
    return f"{dataset}@v{number}"


def sync_dataset_version(
    *,
    dataset: str,
    number: int,
    records: list[VersionRecord],
    named_tags: list[str],
    dataset_id: str = "",
    batch: int = 500,
    progress=None,
) -> VersionSynced:
    """Make MLflow's evaluation dataset `<dataset>@v<number>` hold this version's records, with
    tags `dataset`, `version` and `tag.<name>` = "true" for each named tag pointing at it.

    Open-source MLflow has no dataset versions, so each frozen version is a dataset of its own;
    merging again adds nothing (MLflow keys records by inputs). Raises: TrackingUnavailable.
    """
    mlflow_api()  # pointed at this process's tracking store
    from mlflow.exceptions import MlflowException
    from mlflow.genai import datasets

    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    name = version_dataset_name(dataset, number)
    wanted = {VERSION_TAG_PREFIX + tag: "true" for tag in named_tags}
    try:
        found = None
        if dataset_id:
            try:
                found = datasets.get_dataset(dataset_id=dataset_id)
            except MlflowException:
                found = None  # deleted in MLflow, or another store: found by name or made again
        if found is None:
            # By name within this app's experiment: another deployment sharing the tracking
            # server may have a dataset of the same name.
            same = datasets.search_datasets(
                experiment_ids=[exp_id], filter_string=f"name = '{_quoted(name)}'"
            )
            found = same[0] if same else None
        if found is None:
            found = datasets.create_dataset(
                name=name,
                experiment_id=exp_id,
                tags={"dataset": dataset, "version": str(number), **wanted},
            )
        held = len(found.to_df()) if found.has_records() else 0
        distinct = len({json.dumps(r.messages, sort_keys=True) for r in records})
        if held < distinct:
            for start in range(0, len(records), batch):
                found.merge_records([_record(r) for r in records[start : start + batch]])
                if progress:
                    progress(min(start + batch, len(records)), len(records))
        current = dict(found.tags or {})
        stale = [k for k in current if k.startswith(VERSION_TAG_PREFIX) and k not in wanted]
        for key in stale:
            datasets.delete_dataset_tag(dataset_id=found.dataset_id, key=key)
        missing = {k: v for k, v in wanted.items() if current.get(k) != v}
        if missing:
            datasets.set_dataset_tags(dataset_id=found.dataset_id, tags=missing)
        count = len(datasets.get_dataset(dataset_id=found.dataset_id).to_df())
        return VersionSynced(dataset_id=found.dataset_id, name=name, records=count)
    except TrackingUnavailable:
        raise
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def _quoted(value: str) -> str:
    if "'" in value or "\\" in value:
        raise TrackingUnavailable(f"dataset name {value!r}: quotes are not allowed")
    return value


def _record(record: VersionRecord) -> dict:
    source = {"record_key": record.key}
    if record.trace_id:
        source["trace_id"] = record.trace_id
    tags = {"record_key": record.key}
    if record.turn_id is not None:
        tags["turn_id"] = str(record.turn_id)
    if record.corrected_by is not None:
        tags["corrected_by"] = str(record.corrected_by)
    if record.corrected_at:
        tags["corrected_at"] = record.corrected_at
    return {
        "inputs": {"messages": record.messages},
        "expectations": {EXPECTATION_NAME: record.expectation},
        "source": {"source_type": "TRACE" if record.trace_id else "HUMAN", "source_data": source},
        "tags": tags,
    }


def delete_eval_datasets(*, names: list[str]) -> int:
    """Delete the app experiment's MLflow evaluation datasets of these names (an erasure: the
    copies of dataset versions that held the person's records); returns how many went.

    Needs the full `mlflow` package (the tracing SDK has no `mlflow.genai`): in a worker on the
    SDK this raises TrackingUnavailable saying so, and the erasure waits for
    `erase_user --pending`. Raises: TrackingUnavailable.
    """
    return len([_delete(found) for found in _named(names)])


def existing_eval_datasets(*, names: list[str]) -> list[str]:
    """Those of these dataset names the app's experiment still has. Raises: TrackingUnavailable."""
    return sorted(found.name for found in _named(names))


def _named(names: list[str]) -> list:
    if not names:
        return []
    mlflow_api()
    try:
        from mlflow.genai import datasets
    except ImportError as exc:
        raise TrackingUnavailable(
            "evaluation datasets need the full mlflow package (this is the tracing SDK): "
            "run `manage.py erase_user --pending` where .venv is"
        ) from exc
    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    try:
        return [
            found
            for name in names
            for found in datasets.search_datasets(
                experiment_ids=[exp_id], filter_string=f"name = '{_quoted(name)}'"
            )
        ]
    except TrackingUnavailable:
        raise
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def _delete(found) -> str:
    from mlflow.genai import datasets

    try:
        datasets.delete_dataset(dataset_id=found.dataset_id)
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return found.dataset_id
