"""W3C Trace Context: joining a caller's trace, and passing ours on to the services we call.

Parsed here rather than with MLflow's `set_tracing_context_from_http_request_headers`: a turn's
spans are recorded in memory without MLflow's live tracer (see `spans`), so what the turn needs
is only the caller's trace id and span id, kept on its recorded trace. A header that is not a
valid `traceparent` (https://www.w3.org/TR/trace-context/#traceparent-header) is ignored, as the
specification asks: the turn then starts a trace of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"

# version-traceid-parentid-flags; a later version may append fields after another "-".
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?"
)
# Passed on unchanged when it looks like list-members of printable ASCII, within the spec's size.
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")


@dataclass(frozen=True)
class CallerContext:
    """The span of the caller that sent this request: our turn's root span is its child."""

    trace_id: int  # 128-bit OpenTelemetry trace id
    span_id: int  # 64-bit OpenTelemetry span id
    tracestate: str = ""


def caller_context(headers: Mapping[str, str]) -> CallerContext | None:
    """The caller's trace context from request headers; None when absent or malformed."""
    value = (headers.get(TRACEPARENT) or "").strip()
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, rest = match["version"], match["rest"]
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(match["trace_id"], 16), int(match["span_id"], 16)
    if not trace_id or not span_id:
        return None
    state = (headers.get(TRACESTATE) or "").strip()
    return CallerContext(trace_id, span_id, state if _TRACESTATE.fullmatch(state) else "")


def passed_on(caller: CallerContext | None) -> dict[str, str]:
    """The caller's own headers, for a call made while this process records no trace."""
    if caller is None:
        return {}
    headers = {TRACEPARENT: traceparent(trace_id=caller.trace_id, span_id=caller.span_id)}
    return {**headers, TRACESTATE: caller.tracestate} if caller.tracestate else headers


def traceparent(*, trace_id: int, span_id: int) -> str:
    """The `traceparent` naming one of our spans (sampled: every turn's trace is recorded)."""
    return f"00-{trace_id:032x}-{span_id:016x}-01"
