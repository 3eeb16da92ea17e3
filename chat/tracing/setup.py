"""Configuring MLflow once per process, and where traces go.

The experiment is resolved at start-up (`ChatConfig.ready()`), so no write makes a network call to
look it up. Every MLflow HTTP call from this process is bounded (timeout, retries).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import mlflow
from django.conf import settings
from mlflow.entities.trace_location import MlflowExperimentLocation

from chat.tracing.errors import short

logger = logging.getLogger(__name__)

RESOLVE_RETRY_INTERVAL_S = 10.0


class _Destination:
    """Where traces go; resolved once per process (and re-resolved in the background if down)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.experiment_id: str | None = None
        self.retry_thread: threading.Thread | None = None
        self.generation = 0


_destination = _Destination()


def configure(*, tracking_uri: str | None = None, experiment_name: str | None = None) -> bool:
    """Point MLflow at the tracking store and resolve the experiment; True if tracing is ready.

    Called from `ChatConfig.ready()`. When the tracking server is unreachable the app still
    starts: turns record their traces in the database as always, and a background thread keeps
    trying to resolve the experiment (the delivery process needs it; requests do not).
    """
    if not settings.TRACING_ENABLED:
        with _destination.lock:
            _destination.experiment_id = None
            _destination.generation += 1
        return False
    # MLflow reads these on every HTTP call; bounded so nothing waits minutes on a dead server.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.MLFLOW_HTTP_REQUEST_TIMEOUT)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.MLFLOW_HTTP_REQUEST_MAX_RETRIES)
    os.environ["MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS"] = str(
        settings.MLFLOW_TRACE_EXPORT_INTERVAL_MS
    )
    tracking_uri = tracking_uri or settings.MLFLOW_TRACKING_URI
    experiment_name = experiment_name or settings.MLFLOW_EXPERIMENT_NAME
    mlflow.set_tracking_uri(tracking_uri)
    # A re-configuration must not leave the old exporters' queues running (or unflushed).
    if _destination.generation:
        _flush(terminate=True)
    with _destination.lock:
        _destination.experiment_id = None
        _destination.generation += 1
        generation = _destination.generation
    if _try_resolve(experiment_name, generation):
        return True
    thread = threading.Thread(
        target=_keep_resolving,
        args=(experiment_name, generation),
        name="mlflow-experiment-resolver",
        daemon=True,
    )
    _destination.retry_thread = thread
    thread.start()
    return False


def is_ready() -> bool:
    return _destination.experiment_id is not None


def experiment_id() -> str | None:
    return _destination.experiment_id


def _try_resolve(experiment_name: str, generation: int) -> bool:
    try:
        exp_id = _get_or_create_experiment(experiment_name)
        with _destination.lock:
            if generation != _destination.generation:
                return True  # reconfigured meanwhile; this result is stale
            mlflow.tracing.set_destination(MlflowExperimentLocation(experiment_id=exp_id))
            _destination.experiment_id = exp_id
        logger.info("mlflow tracing ready experiment_id=%s", exp_id)
        return True
    except Exception as exc:
        logger.warning(
            "mlflow tracing not ready (traces wait in the database until it is) uri=%s error=%s",
            mlflow.get_tracking_uri(),
            short(exc),
        )
        return False


def _keep_resolving(experiment_name: str, generation: int) -> None:
    while generation == _destination.generation and not is_ready():
        time.sleep(RESOLVE_RETRY_INTERVAL_S)
        if generation == _destination.generation and _try_resolve(experiment_name, generation):
            return


def _get_or_create_experiment(name: str) -> str:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        # Without this a local store writes ./mlruns into the working directory.
        artifact_location = f"{settings.MLFLOW_ARTIFACT_ROOT.rstrip('/')}/{name}"
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another worker may have created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flush() -> None:
    """Export whatever is queued; call before a process exits (SIGTERM loses the queue)."""
    _flush(terminate=False)


def _flush(*, terminate: bool) -> None:
    try:
        mlflow.flush_trace_async_logging(terminate=terminate)
    except Exception as exc:
        logger.warning("mlflow flush failed error=%s", short(exc))


def tracking_reachable() -> bool:
    """One cheap call to the tracking store: is it answering?"""
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
        return True
    except Exception:
        return False


def deployment_metadata() -> dict[str, str]:
    """Which deployment answered: on every trace, from settings."""
    return {
        "mlflow.source.type": settings.APP_ENVIRONMENT,
        "environment": settings.APP_ENVIRONMENT,
        "app_version": settings.APP_VERSION,
        "deployment_id": settings.DEPLOYMENT_ID,
        "region": settings.REGION,
    }


_health_cache: dict[str, tuple[float, bool]] = {}


def tracking_health(*, timeout_s: float = 1.0, cache_s: float = 5.0) -> bool:
    """Is the tracking store answering? Cheap and bounded, for /health/ (cached a few seconds)."""
    uri = mlflow.get_tracking_uri()
    cached = _health_cache.get(uri)
    if cached and time.monotonic() - cached[0] < cache_s:
        return cached[1]
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            healthy = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).ok
        except requests.RequestException:
            healthy = False
    else:
        healthy = tracking_reachable()
    _health_cache[uri] = (time.monotonic(), healthy)
    return healthy
