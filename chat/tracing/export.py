"""Writing recorded traces to MLflow: complete, with their original ids and timestamps.

Called by the delivery process only, never on a request. The write uses the calls MLflow's own
exporter makes (`start_trace` for the trace info, `log_spans`), but synchronously, so failures
reach the caller instead of a log line, and for a whole batch at once. Both are upserts keyed by
the trace id and span ids chosen when the turn was recorded, so writing the same trace again
adds nothing.

MLflow is imported inside the functions (see `setup.mlflow_api`): importing this module, as every
web worker does through the package, costs nothing. Every call used here is in MLflow's tracing
SDK (`mlflow-tracing`), so the delivery process can run on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from django.conf import settings

from chat.tracing import sqlstore
from chat.tracing.errors import TrackingUnavailable, short
from chat.tracing.setup import experiment_id, mlflow_api, tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import Span, TraceInfo
    from mlflow.tracing.client import TracingClient

logger = logging.getLogger(__name__)

# MLflow's answers that mean "not this trace" rather than "not now": counted towards failing it.
REFUSALS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}


def _client() -> TracingClient:
    mlflow_api()
    from mlflow.tracing.client import TracingClient

    return TracingClient(tracking_uri())


def _span(trace_id: str, data: dict) -> Span:
    from mlflow.entities import Span, SpanStatus
    from mlflow.tracing.constant import SpanAttributeKey
    from mlflow.tracing.utils import build_otel_context, dump_span_attribute_value
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan

    otel_trace_id = int(trace_id[3:], 16)
    attributes = {
        SpanAttributeKey.REQUEST_ID: trace_id,
        SpanAttributeKey.SPAN_TYPE: data["type"],
        SpanAttributeKey.INPUTS: data["inputs"],
        SpanAttributeKey.OUTPUTS: data["outputs"],
        **data["attributes"],
    }
    parent = data["parent_id"]
    status = data["status"]
    message = data["status_message"] if status == "ERROR" else ""
    otel = ReadableSpan(
        name=data["name"],
        context=build_otel_context(otel_trace_id, data["span_id"]),
        parent=build_otel_context(otel_trace_id, parent) if parent else None,
        start_time=data["start_ns"],
        end_time=data["end_ns"],
        attributes={k: dump_span_attribute_value(v) for k, v in attributes.items()},
        status=SpanStatus(status, message).to_otel_status(),
        # An empty resource: otherwise OpenTelemetry's host resource lands in the trace's tags.
        resource=Resource.get_empty(),
    )
    return Span(otel)


def build(payload: dict, exp_id: str) -> tuple[TraceInfo, list[Span]]:
    """MLflow's entities for one recorded trace (see `spans.TurnTrace.payload`)."""
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.tracing.constant import (
        TRACE_SCHEMA_VERSION,
        TRACE_SCHEMA_VERSION_KEY,
        SpanAttributeKey,
        TraceMetadataKey,
        TraceTagKey,
    )

    trace_id = payload["trace_id"]
    spans = [_span(trace_id, data) for data in payload["spans"]]
    metadata = {
        TRACE_SCHEMA_VERSION_KEY: str(TRACE_SCHEMA_VERSION),
        TraceMetadataKey.TRACE_USER: payload["user"],
        TraceMetadataKey.TRACE_SESSION: payload["session"],
        **payload["metadata"],
    }
    usage = [s["attributes"].get(SpanAttributeKey.CHAT_USAGE) for s in payload["spans"]]
    usage = [u for u in usage if u]
    if usage:
        metadata[TraceMetadataKey.TOKEN_USAGE] = json.dumps(
            {k: sum(u.get(k, 0) for u in usage) for k in usage[0]}
        )
    info = TraceInfo(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(exp_id),
        request_time=payload["start_ns"] // 1_000_000,
        execution_duration=(payload["end_ns"] - payload["start_ns"]) // 1_000_000,
        state=TraceState(payload["state"]),
        client_request_id=payload["client_request_id"],
        request_preview=payload["request_preview"],
        response_preview=payload["response_preview"],
        trace_metadata=metadata,
        tags={TraceTagKey.TRACE_NAME: "chat_turn", **payload["tags"]},
    )
    return info, spans


def write_traces(payloads: Sequence[dict]) -> dict[str, str]:
    """Write these recorded traces to MLflow; returns {trace_id: error} for those that failed.

    Each trace info in a few threads, then all the spans in one call. Trace info first is the
    store's insert path (about twice as fast as spans first, which makes every trace info a
    merge); until the spans call returns, a search may see a trace without its spans, which is
    why a row is marked exported only after both, and feedback waits for that mark.
    Raises: TrackingUnavailable when the tracking store is not configured, refused every trace
    info, or refused the spans.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.rest_store import RestStore

    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    client = _client()
    built = [build(payload, exp_id) for payload in payloads]

    def commit(info: TraceInfo) -> tuple[str, str]:
        try:
            stored = client.start_trace(info)
        except MlflowException as exc:
            if exc.error_code not in REFUSALS:
                raise TrackingUnavailable(short(exc)) from exc
            return info.trace_id, short(exc)
        except Exception as exc:
            raise TrackingUnavailable(short(exc)) from exc
        if stored.state != info.state:
            return info.trace_id, f"stored state {stored.state} != {info.state}"
        return info.trace_id, ""

    infos = [info for info, _ in built]
    if sqlstore.is_sql_store(client.store):
        # The tracking store's database itself: the whole batch in one transaction.
        try:
            errors = sqlstore.start_traces(client.store, infos)
        except Exception as exc:
            raise TrackingUnavailable(short(exc)) from exc
    else:
        # The first alone: when the server is down, one call finds out, not a batch's worth.
        first = commit(infos[0])
        threads = settings.TRACE_WRITE_THREADS
        with ThreadPoolExecutor(threads, thread_name_prefix="trace-info") as pool:
            results = [first, *pool.map(commit, infos[1:])]
        errors = {trace_id: error for trace_id, error in results if error}
    spans = [span for info, spans in built if info.trace_id not in errors for span in spans]
    try:
        client.log_spans(exp_id, spans)
    except NotImplementedError as exc:
        # The REST store raises this when it could not ask the server its version, and caches
        # that answer for good: clear it so the next attempt asks again.
        RestStore._get_server_version.cache_clear()
        raise TrackingUnavailable(f"the tracking server did not answer: {short(exc)}") from exc
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return errors


def trace_problems(trace_ids: Sequence[str], expected: dict[str, dict]) -> dict[str, str]:
    """What is wrong with each stored trace compared with its recorded payload ("" when right).

    Checks it exists, is finished (not IN_PROGRESS), has all its spans, and carries the right
    client request id, user, session, deployment metadata and tags.
    Raises: TrackingUnavailable.
    """
    client = _client()
    problems: dict[str, str] = {}
    try:
        traces = {t.info.trace_id: t for t in client.batch_get_traces(list(trace_ids))}
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    for trace_id in trace_ids:
        trace, payload = traces.get(trace_id), expected[trace_id]
        if trace is None:
            problems[trace_id] = "missing"
            continue
        problems[trace_id] = _compare(trace, payload)
    return problems


def _compare(trace, payload: dict) -> str:
    from mlflow.tracing.constant import TraceMetadataKey

    info = trace.info
    state = str(getattr(info.state, "value", info.state))
    if state != payload["state"]:
        return f"half-written (state {state}, expected {payload['state']})"
    # Our spans, by id: a trace that joined a caller's trace also holds the caller's spans.
    stored = {span.span_id for span in trace.data.spans}
    have = sum(f"{span['span_id']:016x}" in stored for span in payload["spans"])
    if have != len(payload["spans"]):
        return f"half-written ({have} of {len(payload['spans'])} spans)"
    if payload["spans"][0]["parent_id"] is not None:
        # It joined a caller's trace: the trace info is the caller's to write too (its tracer's
        # last write wins), and a repair must not delete the caller's spans over it.
        return ""
    metadata = info.trace_metadata or {}
    wanted = {
        "client_request_id": (info.client_request_id, payload["client_request_id"]),
        "user": (metadata.get(TraceMetadataKey.TRACE_USER), payload["user"]),
        "session": (metadata.get(TraceMetadataKey.TRACE_SESSION), payload["session"]),
        **{f"metadata {k}": (metadata.get(k), v) for k, v in payload["metadata"].items()},
        **{f"tag {k}": ((info.tags or {}).get(k), v) for k, v in payload["tags"].items()},
    }
    wrong = [name for name, (have, want) in wanted.items() if str(have) != str(want)]
    return f"wrong {', '.join(wrong)}" if wrong else ""


def delete_traces(trace_ids: Sequence[str]) -> int:
    """Remove traces from the experiment (to rewrite a half-written one cleanly).

    Raises: TrackingUnavailable.
    """
    exp_id = experiment_id()
    if exp_id is None or not trace_ids:
        return 0
    try:
        return _client().delete_traces(experiment_id=exp_id, trace_ids=list(trace_ids))
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc


def experiment_trace_ids(
    *, since_ms: int | None = None, filter_string: str | None = None
) -> list[str]:
    """Every trace id in the app's experiment (since a time, matching a filter).

    The audit uses it to find traces without a turn, erasure to find a person's traces.
    Raises: TrackingUnavailable.
    """
    exp_id = experiment_id()
    if exp_id is None:
        raise TrackingUnavailable("tracing is not configured or the tracking store is down")
    filters = [f for f in (filter_string,) if f]
    if since_ms:
        filters.append(f"attributes.timestamp_ms >= {int(since_ms)}")
    client = _client()
    found, token = [], None
    try:
        while True:
            page = client.search_traces(
                locations=[exp_id],
                filter_string=" AND ".join(filters) or None,
                max_results=500,
                page_token=token,
                include_spans=False,
            )
            found += [t.info.trace_id for t in page]
            token = page.token
            if not token:
                return found
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
