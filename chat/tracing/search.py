"""Finding this app's traces by user, session, request id, tags, deployment and feedback.

MLflow is imported on the first search (see `setup.mlflow_api`), with its tracing SDK's client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chat.tracing.errors import TrackingUnavailable, UnsafeFilterValue, short
from chat.tracing.links import trace_ui_url
from chat.tracing.setup import experiment_id, mlflow_api, tracking_uri

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
    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    mlflow_api()
    from mlflow.tracing.client import TracingClient

    try:
        page = TracingClient(tracking_uri()).search_traces(
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
            raise UnsafeFilterValue(short(exc)) from exc
        raise TrackingUnavailable(short(exc)) from exc
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
