"""Configuring MLflow once per process, and where traces go.

The experiment is resolved at start-up (`ChatConfig.ready()`), so no write makes a network call to
look it up. Every MLflow HTTP call from this process is bounded (timeout, retries).

MLflow itself is imported only by what calls it (`mlflow_api()`): the delivery processes, trace
search, the audit. A web worker records traces in memory and never needs it, and `import mlflow`
costs ~1.9 s and ~150 MB (pandas, numpy, pyarrow), so against a tracking *server* the experiment
is resolved over MLflow's REST API with the standard library; only a local store (SQLite, as in
the tests) makes `configure()` import MLflow.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from types import ModuleType
from urllib.parse import urlencode

from django.conf import settings

from chat.tracing.errors import short

logger = logging.getLogger(__name__)

RESOLVE_RETRY_INTERVAL_S = 10.0


class _Destination:
    """Where traces go; resolved once per process (and re-resolved in the background if down)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.retry_thread: threading.Thread | None = None
        self.generation = 0
        self.mlflow_generation = -1  # the configuration MLflow was last pointed at


_destination = _Destination()


def configure(*, tracking_uri: str | None = None, experiment_name: str | None = None) -> bool:
    """Point this process at the tracking store and resolve the experiment; True if ready.

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
    # A re-configuration must not leave the old exporters' queues running (or unflushed).
    if _destination.generation:
        _flush(terminate=True)
    with _destination.lock:
        _destination.tracking_uri = tracking_uri
        _destination.experiment_id = None
        _destination.generation += 1
        generation = _destination.generation
    if "mlflow" in sys.modules:
        mlflow_api()  # already loaded (a test, a command): point it here now
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


def tracking_uri() -> str:
    return _destination.tracking_uri or settings.MLFLOW_TRACKING_URI


def mlflow_api() -> ModuleType:
    """The `mlflow` module, imported on first use and pointed at this process's tracking store.

    Everything that calls MLflow goes through this, so a process that never does (a web worker)
    never imports it. Works with the full package and with the tracing SDK (`mlflow-tracing`).
    """
    import mlflow

    with _destination.lock:
        if _destination.mlflow_generation != _destination.generation:
            mlflow.set_tracking_uri(tracking_uri())
            _destination.mlflow_generation = _destination.generation
    return mlflow


def _over_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def rest_call(
    method: str,
    endpoint: str,
    *,
    params: dict | None = None,
    body: dict | None = None,
    timeout: float | None = None,
) -> tuple[int, dict]:
    """One call to the tracking server's REST API (`/api/2.0/mlflow/...`): (status, JSON body).

    No MLflow and no `requests` (~8 MB more per process than the standard library). Honours
    MLflow's own client variables for auth and TLS: MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME/PASSWORD, MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH. Raises: OSError when the server cannot be reached.
    """
    url = f"{tracking_uri().rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if params:
        url += f"?{urlencode(params)}"
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    elif username := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{username}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    timeout = timeout or settings.MLFLOW_HTTP_REQUEST_TIMEOUT
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls()) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def _tls():
    if not tracking_uri().startswith("https://"):
        return None
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the operator asked for it
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def _try_resolve(experiment_name: str, generation: int) -> bool:
    try:
        exp_id = _get_or_create_experiment(experiment_name)
        with _destination.lock:
            if generation != _destination.generation:
                return True  # reconfigured meanwhile; this result is stale
            _destination.experiment_id = exp_id
        logger.info("mlflow tracing ready experiment_id=%s", exp_id)
        return True
    except Exception as exc:
        logger.warning(
            "mlflow tracing not ready (traces wait in the database until it is) uri=%s error=%s",
            tracking_uri(),
            short(exc),
        )
        return False


def _keep_resolving(experiment_name: str, generation: int) -> None:
    while generation == _destination.generation and not is_ready():
        time.sleep(RESOLVE_RETRY_INTERVAL_S)
        if generation == _destination.generation and _try_resolve(experiment_name, generation):
            return


def _get_or_create_experiment(name: str) -> str:
    if _over_http(tracking_uri()):
        return _get_or_create_experiment_over_rest(name)
    client = mlflow_api().MlflowClient()  # a local store: the full package, as in the tests
    _ensure_search_indexes(client)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
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


def _ensure_search_indexes(client) -> None:
    """Searches by user and request id stay fast however large the store grows (see
    `sqlstore.SEARCH_INDEXES`); only a process given the store's database can add them."""
    from chat.tracing import sqlstore

    store = client._tracking_client.store
    if sqlstore.is_sql_store(store):
        sqlstore.ensure_search_indexes(store)


def _get_or_create_experiment_over_rest(name: str) -> str:
    def lookup() -> str | None:
        status, body = rest_call("GET", "experiments/get-by-name", params={"experiment_name": name})
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"experiments/get-by-name answered {status}: {str(body)[:200]}")
        return body["experiment"]["experiment_id"]

    if (found := lookup()) is not None:
        return found
    status, body = rest_call("POST", "experiments/create", body={"name": name})
    if status == 200:
        return body["experiment_id"]
    # Another worker may have created it between our lookup and our create.
    if (found := lookup()) is None:
        raise RuntimeError(f"experiments/create answered {status}: {str(body)[:200]}")
    return found


def flush() -> None:
    """Export whatever is queued; call before a process exits (SIGTERM loses the queue)."""
    _flush(terminate=False)


def _flush(*, terminate: bool) -> None:
    if "mlflow" not in sys.modules:
        return  # never imported here, so nothing is queued
    try:
        sys.modules["mlflow"].flush_trace_async_logging(terminate=terminate)
    except Exception as exc:
        logger.warning("mlflow flush failed error=%s", short(exc))


def tracking_reachable() -> bool:
    """One cheap call to the tracking store: is it answering?"""
    try:
        if _over_http(tracking_uri()):
            status, _ = rest_call("GET", "experiments/search", params={"max_results": 1})
            return status == 200
        mlflow_api().MlflowClient().search_experiments(max_results=1)
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
    uri = tracking_uri()
    cached = _health_cache.get(uri)
    if cached and time.monotonic() - cached[0] < cache_s:
        return cached[1]
    if _over_http(uri):
        request = urllib.request.Request(f"{uri.rstrip('/')}/health")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=_tls()) as response:  # noqa: S310
                healthy = response.status == 200
        except (OSError, ValueError):
            healthy = False
    else:
        healthy = tracking_reachable()
    _health_cache[uri] = (time.monotonic(), healthy)
    return healthy
