"""An evaluation run (the `evals` app's `manage.py evaluate`) recorded as an MLflow run.

A plain MLflow run rather than `mlflow.genai.evaluate`: the outputs and scores are computed once
by the app (the judge through the app's own model seam, not litellm), and `genai.evaluate` with
pre-computed outputs writes a trace per record and runs its scorers again. The run names the
dataset version (params, tags, and the version's MLflow dataset as the run's input when it was
synced) and the app version; its metrics are the figures the command prints, and
`eval_results.json` is the per-record table. Needs the full `mlflow` package (a command).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from chat.tracing.errors import TrackingUnavailable, short
from chat.tracing.setup import experiment_id, mlflow_api

RESULTS_ARTIFACT = "eval_results.json"


@dataclass
class EvaluationLog:
    run_name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    # Column name -> values, one per record (MLflow's table artifact).
    table: dict[str, list] = field(default_factory=dict)
    dataset_id: str = ""  # the version's MLflow dataset, when `datasets sync` made it


def log_evaluation_run(log: EvaluationLog) -> str:
    """Record an evaluation as an MLflow run in the app's experiment; returns its run id.

    Raises: TrackingUnavailable.
    """
    mlflow = mlflow_api()
    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=log.run_name) as run:
            mlflow.log_params(log.params)
            mlflow.set_tags(log.tags)
            mlflow.log_metrics(log.metrics)
            if log.table:
                mlflow.log_table(data=log.table, artifact_file=RESULTS_ARTIFACT)
            if log.dataset_id:
                from mlflow.genai import datasets

                mlflow.log_input(
                    datasets.get_dataset(dataset_id=log.dataset_id), context="evaluation"
                )
        return run.info.run_id
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def run_ui_url(run_id: str) -> str | None:
    exp_id = experiment_id()
    if not run_id or not exp_id:
        return None
    return f"{settings.MLFLOW_UI_URL.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
