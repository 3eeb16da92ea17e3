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
            chunk = trace_ids[start : start + batch]
            dataset.merge_records([client.get_trace(t, display=False) for t in chunk])
            if progress:
                progress(min(start + batch, len(trace_ids)), len(trace_ids))
        return len(datasets.get_dataset(name=name).to_df())
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
