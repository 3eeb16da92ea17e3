"""Production traces with corrected answers as an MLflow evaluation dataset.

Needs the full `mlflow` package (`mlflow.genai.datasets` is not in the tracing SDK): the
`export_eval_dataset` command runs in the full environment (.venv), never in .venv-sdk.
"""

from __future__ import annotations

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
