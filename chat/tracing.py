"""The one module that talks to MLflow.

Rules it keeps (see shared/SEED-NOTES.md for the measurements behind them):
- MLflow is configured once, at start-up; the experiment is resolved then, so no trace makes a
  network call to look it up. Until it is resolved, turns run untraced rather than wait.
- Every MLflow HTTP call from this process is bounded (timeout, retries).
- Nothing here raises into a chat turn: MLflow trouble is logged and the turn goes on.
- Trace ids are read from the live span inside the traced code, never from
  `mlflow.get_last_active_trace_id()` (process-wide, wrong under threads).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import mlflow
from django.conf import settings
from mlflow.entities import SpanType
from mlflow.entities.trace_location import MlflowExperimentLocation
from mlflow.tracing.constant import SpanAttributeKey

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 1000
RESOLVE_RETRY_INTERVAL_S = 10.0


class _Destination:
    """Where traces go; resolved once per process (and re-resolved in the background if down)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.experiment_id: str | None = None
        self.retry_thread: threading.Thread | None = None
        self.generation = 0


_destination = _Destination()
_current_root: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "chat_trace_root", default=None
)


def configure(*, tracking_uri: str | None = None, experiment_name: str | None = None) -> bool:
    """Point MLflow at the tracking store and resolve the experiment; True if tracing is ready.

    Called from `ChatConfig.ready()`. When the tracking server is unreachable the app still
    starts: turns run untraced and a background thread keeps trying to resolve the experiment.
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
            "mlflow tracing not ready (turns run untraced until it is) uri=%s error=%s",
            mlflow.get_tracking_uri(),
            _short(exc),
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
        logger.warning("mlflow flush failed error=%s", _short(exc))


def deployment_metadata() -> dict[str, str]:
    return {
        "mlflow.source.type": settings.APP_ENVIRONMENT,
        "environment": settings.APP_ENVIRONMENT,
        "app_version": settings.APP_VERSION,
        "deployment_id": settings.DEPLOYMENT_ID,
        "region": settings.REGION,
    }


def trace_ui_url(trace_id: str | None) -> str | None:
    """A link to the trace in the MLflow UI, or None when there is no trace."""
    exp_id = _destination.experiment_id
    if not trace_id or not exp_id:
        return None
    query = urlencode({"selectedEvaluationId": trace_id})
    return f"{settings.MLFLOW_UI_URL.rstrip('/')}/#/experiments/{exp_id}/traces?{query}"


def session_ui_url(session_id) -> str | None:
    """A link to the conversation's page (all its traces) in the MLflow UI."""
    exp_id = _destination.experiment_id
    if not session_id or not exp_id:
        return None
    return f"{settings.MLFLOW_UI_URL.rstrip('/')}/#/experiments/{exp_id}/chat-sessions/{session_id}"


class Span:
    """A span that never raises; without a live MLflow span every method does nothing."""

    def __init__(self, live: Any = None):
        self.live = live

    @property
    def trace_id(self) -> str | None:
        return self.live.trace_id if self.live is not None else None

    def set_inputs(self, inputs: Any) -> None:
        self._call("set_inputs", inputs)

    def set_outputs(self, outputs: Any) -> None:
        self._call("set_outputs", outputs)

    def set_attribute(self, key: str, value: Any) -> None:
        self._call("set_attribute", key, value)

    def set_status(self, status: str, description: str = "") -> None:
        from mlflow.entities import SpanStatus, SpanStatusCode

        self._call("set_status", SpanStatus(SpanStatusCode(status), description))

    def set_token_usage(self, *, input_tokens: int, output_tokens: int) -> None:
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        self._call("set_attribute", SpanAttributeKey.CHAT_USAGE, usage)

    def _call(self, method: str, *args: Any) -> None:
        if self.live is None:
            return
        try:
            getattr(self.live, method)(*args)
        except Exception as exc:
            logger.warning("mlflow span.%s failed error=%s", method, _short(exc))


@contextmanager
def _mlflow_span(name: str, span_type: str) -> Iterator[Span]:
    try:
        manager = mlflow.start_span(name=name, span_type=span_type)
        live = manager.__enter__()
    except Exception as exc:
        logger.warning("mlflow start_span failed span=%s error=%s", name, _short(exc))
        yield Span(None)
        return
    try:
        yield Span(live)
    except BaseException as exc:
        # The span records the error and its trace ends ERROR; the exception goes on to the caller.
        _end(manager, name, exc)
        raise
    _end(manager, name, None)


def _end(manager: Any, name: str, exc: BaseException | None) -> None:
    try:
        if exc is None:
            manager.__exit__(None, None, None)
        else:
            manager.__exit__(type(exc), exc, exc.__traceback__)
    except BaseException as err:
        if err is not exc:
            logger.warning("mlflow span end failed span=%s error=%s", name, _short(err))


@contextmanager
def turn_trace(
    *,
    message: str,
    user_id: int,
    session_id: str,
    client_request_id: str,
    endpoint: str,
) -> Iterator[Span]:
    """The root span of one chat turn, with who, where, which request and which deployment.

    Yields a `Span` whose `trace_id` is None when tracing is off or not ready.
    """
    if not is_ready():
        yield Span(None)
        return
    with _mlflow_span("chat_turn", SpanType.CHAIN) as root:
        token = _current_root.set(root) if root.live is not None else None
        # Chat-shaped inputs/outputs: the MLflow UI shows them as a conversation, and the SQL
        # store derives the same previews from them if it sees the spans before our trace info.
        root.set_inputs(
            {
                "messages": [{"role": "user", "content": message}],
                "session_id": session_id,
                "client_request_id": client_request_id,
            }
        )
        _update_current_trace(
            client_request_id=client_request_id,
            session_id=session_id,
            user=str(user_id),
            metadata=deployment_metadata(),
            tags={**settings.TRACE_TAGS, "endpoint": endpoint},
            request_preview=_clip(message),
        )
        try:
            yield root
        finally:
            if token is not None:
                _current_root.reset(token)


def finish_turn(root: Span, *, response: str) -> None:
    """Record the turn's answer on its root span (call inside `turn_trace`)."""
    if root.live is None:
        return
    root.set_outputs(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": response}}]}
    )
    _update_current_trace(response_preview=_clip(response))


def mark_disconnected(root: Span, *, partial_response: str) -> None:
    """The client left mid-stream: keep what was generated and say so on the trace."""
    if root.live is None:
        return
    root.set_outputs(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": partial_response}}]}
    )
    root.set_attribute("client_disconnected", True)
    root.set_status("ERROR", "client disconnected before the answer was complete")
    _update_current_trace(
        tags={"client_disconnected": "true"}, response_preview=_clip(partial_response)
    )


@contextmanager
def child_span(name: str, span_type: str = SpanType.UNKNOWN) -> Iterator[Span]:
    """A span inside the current turn's trace; a no-op outside one."""
    if _current_root.get() is None:
        yield Span(None)
        return
    with _mlflow_span(name, span_type) as span:
        yield span


def _update_current_trace(**fields: Any) -> None:
    try:
        mlflow.update_current_trace(**fields)
    except Exception as exc:
        logger.warning("mlflow update_current_trace failed error=%s", _short(exc))


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# --- Assessments (human feedback) ----------------------------------------------------------------

ASSESSMENT_KEY = "chat.feedback_id"
EXPECTATION_NAME = "expected_response"


class TraceNotFound(Exception):
    """The trace is not in the tracking store: still in an export queue, or never exported."""


class TrackingUnavailable(Exception):
    """The tracking store could not be reached or refused the call."""


def sync_assessments(
    *,
    trace_id: str,
    key: str,
    source_id: str,
    feedback: tuple[str, bool | int, str] | None,
    expectation: str | None,
    known_empty: bool = False,
) -> tuple[str, str]:
    """Make the trace's assessments tagged `key` match: one valid feedback, one expectation.

    `feedback` is (name, value, rationale) or None to remove it; `expectation` the expected
    response or None. A changed feedback value supersedes the old one with `override_feedback`
    (MLflow keeps its history). Safe to repeat: what already matches is left alone.
    `known_empty` (nothing was ever sent for `key`) skips reading the trace first, which halves
    the calls on the common path.
    Returns the (feedback, expectation) assessment ids, "" for none.
    Raises: TraceNotFound, TrackingUnavailable.
    """
    from mlflow.entities import AssessmentSource
    from mlflow.exceptions import MlflowException

    source = AssessmentSource(source_type="HUMAN", source_id=source_id)
    metadata = {ASSESSMENT_KEY: key}
    try:
        ours = [] if known_empty else _our_assessments(trace_id, key)
        feedback_id = _sync_feedback(
            trace_id, [a for a in ours if a.feedback is not None], feedback, source, metadata
        )
        expectation_id = _sync_expectation(
            trace_id, [a for a in ours if a.expectation is not None], expectation, source, metadata
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TraceNotFound(f"trace {trace_id} is not in the tracking store yet") from exc
        raise TrackingUnavailable(_short(exc)) from exc
    except Exception as exc:
        raise TrackingUnavailable(_short(exc)) from exc
    return feedback_id, expectation_id


def tracking_reachable() -> bool:
    """One cheap call to the tracking store: is it answering?"""
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
        return True
    except Exception:
        return False


def _our_assessments(trace_id: str, key: str) -> list:
    trace = mlflow.MlflowClient().get_trace(trace_id, display=False)
    return [
        a
        for a in (trace.info.assessments or [])
        if (a.metadata or {}).get(ASSESSMENT_KEY) == key and a.valid is not False
    ]


def _sync_feedback(trace_id, current, desired, source, metadata) -> str:
    if desired is None:
        _delete(trace_id, current)
        return ""
    name, value, rationale = desired
    kept = next((a for a in current if a.name == name), None)
    _delete(trace_id, [a for a in current if a is not kept])
    if kept is None:
        created = mlflow.log_feedback(
            trace_id=trace_id,
            name=name,
            value=value,
            rationale=rationale or None,
            source=source,
            metadata=metadata,
        )
        return created.assessment_id
    unchanged = (
        type(kept.feedback.value) is type(value)
        and kept.feedback.value == value
        and (kept.rationale or "") == (rationale or "")
        and kept.source.source_id == source.source_id
    )
    if unchanged:
        return kept.assessment_id
    created = mlflow.override_feedback(
        trace_id=trace_id,
        assessment_id=kept.assessment_id,
        value=value,
        rationale=rationale or None,
        source=source,
        metadata=metadata,
    )
    return created.assessment_id


def _sync_expectation(trace_id, current, desired, source, metadata) -> str:
    kept = next((a for a in current if desired and a.expectation.value == desired), None)
    _delete(trace_id, [a for a in current if a is not kept])
    if not desired:
        return ""
    if kept is not None:
        return kept.assessment_id
    created = mlflow.log_expectation(
        trace_id=trace_id, name=EXPECTATION_NAME, value=desired, source=source, metadata=metadata
    )
    return created.assessment_id


def _delete(trace_id: str, assessments) -> None:
    for assessment in assessments:
        mlflow.delete_assessment(trace_id=trace_id, assessment_id=assessment.assessment_id)


# --- Searching traces ----------------------------------------------------------------------------

# Values go into MLflow's filter grammar inside single quotes; anything outside these sets is
# refused before a filter string is built, so no input can change the filter's meaning.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9 _.:/@+,-]{1,250}\Z")
SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,250}\Z")
ORDERINGS = {
    "-time": "timestamp_ms DESC",
    "time": "timestamp_ms ASC",
    "-duration": "execution_time_ms DESC",
    "duration": "execution_time_ms ASC",
}


class UnsafeFilterValue(ValueError):
    """A filter value that could not be placed in a filter string safely."""


@dataclass(frozen=True)
class TraceQuery:
    user_id: int | None = None
    session_id: str | None = None
    client_request_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    feedback: tuple[tuple[str, str], ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    time: datetime
    duration_ms: int | None
    state: str
    user: str | None
    session: str | None
    client_request_id: str | None
    request_preview: str | None
    response_preview: str | None
    feedback: dict[str, Any]
    expectations: dict[str, Any]
    tags: dict[str, str]
    metadata: dict[str, str]
    url: str | None


@dataclass(frozen=True)
class TracePage:
    traces: list[TraceSummary]
    next_page_token: str | None


def _quoted(value: str) -> str:
    if not SAFE_VALUE.fullmatch(value):
        raise UnsafeFilterValue(f"unsafe filter value: {value[:40]!r}")
    return f"'{value}'"


def _key(key: str) -> str:
    if not SAFE_KEY.fullmatch(key):
        raise UnsafeFilterValue(f"unsafe filter key: {key[:40]!r}")
    return f"`{key}`"


def trace_filter_string(query: TraceQuery) -> str:
    """MLflow's filter grammar for `query`. Raises: UnsafeFilterValue."""
    clauses = []
    if query.user_id is not None:
        clauses.append(f"metadata.`mlflow.trace.user` = {_quoted(str(int(query.user_id)))}")
    if query.session_id:
        clauses.append(f"metadata.`mlflow.trace.session` = {_quoted(query.session_id)}")
    if query.client_request_id:
        clauses.append(f"attributes.client_request_id = {_quoted(query.client_request_id)}")
    clauses += [f"tags.{_key(k)} = {_quoted(v)}" for k, v in query.tags]
    clauses += [f"metadata.{_key(k)} = {_quoted(v)}" for k, v in query.metadata]
    clauses += [f"feedback.{_key(k)} = {_quoted(v)}" for k, v in query.feedback]
    if query.since_ms is not None:
        clauses.append(f"attributes.timestamp_ms >= {int(query.since_ms)}")
    if query.until_ms is not None:
        clauses.append(f"attributes.timestamp_ms < {int(query.until_ms)}")
    return " AND ".join(clauses)


def search_traces(
    query: TraceQuery, *, order: str = "-time", page_token: str | None = None, page_size: int = 50
) -> TracePage:
    """One page of this app's traces matching `query`, newest first by default.

    Raises: UnsafeFilterValue, TrackingUnavailable.
    """
    exp_id = _destination.experiment_id
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    try:
        page = mlflow.MlflowClient().search_traces(
            locations=[exp_id],
            filter_string=trace_filter_string(query) or None,
            max_results=page_size,
            order_by=[ORDERINGS[order]],
            page_token=page_token,
            include_spans=False,
        )
    except UnsafeFilterValue:
        raise
    except Exception as exc:
        if getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
            # e.g. a cursor that is not one of ours: the client's mistake, not an outage
            raise UnsafeFilterValue(_short(exc)) from exc
        raise TrackingUnavailable(_short(exc)) from exc
    token = page.token.decode() if isinstance(page.token, bytes) else page.token
    return TracePage([_summary(t.info) for t in page], token or None)


def _summary(info) -> TraceSummary:
    feedback, expectations = {}, {}
    for assessment in info.assessments or []:
        if assessment.valid is False:
            continue
        if assessment.feedback is not None:
            feedback.setdefault(assessment.name, []).append(assessment.feedback.value)
        elif assessment.expectation is not None:
            expectations[assessment.name] = assessment.expectation.value
    metadata = dict(info.trace_metadata or {})
    return TraceSummary(
        trace_id=info.trace_id,
        time=datetime.fromtimestamp(info.request_time / 1000, tz=UTC),
        duration_ms=info.execution_duration,
        state=str(getattr(info.state, "value", info.state)),
        user=metadata.get("mlflow.trace.user"),
        session=metadata.get("mlflow.trace.session"),
        client_request_id=info.client_request_id,
        request_preview=info.request_preview,
        response_preview=info.response_preview,
        feedback=feedback,
        expectations=expectations,
        tags={k: v for k, v in (info.tags or {}).items() if not k.startswith("mlflow.")},
        metadata={k: v for k, v in metadata.items() if not k.startswith("mlflow.")},
        url=trace_ui_url(info.trace_id),
    )


# --- Evaluation datasets ------------------------------------------------------------------------


def merge_into_eval_dataset(
    *, name: str, trace_ids: list[str], batch: int = 50, progress=None
) -> int:
    """Merge these traces (inputs, outputs, expectations) into the named evaluation dataset.

    MLflow keys records by their inputs, so merging the same traces again adds nothing.
    Returns the dataset's record count. Raises: TrackingUnavailable.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.genai import datasets

    exp_id = _destination.experiment_id
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
        raise TrackingUnavailable(_short(exc)) from exc
