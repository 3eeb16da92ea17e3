"""The spans of one chat turn, recorded in memory on the request path; no MLflow call here.

A turn's trace is recorded as plain data (names, nanosecond timestamps, inputs, outputs) and
stored in the database with the turn's answer, in the same transaction. The delivery process
(`manage.py deliver_traces`) writes it to MLflow later with the original timestamps and ids, so a
tracking-server outage, a full queue or a killed worker cannot lose it, and the request never
waits on export work. With `TRACE_REDACT_PII` on, the payload is masked as it is serialised, so
the stored row and MLflow hold the same masked trace. See docs/tracing.md.
"""

from __future__ import annotations

import contextvars
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from django.conf import settings

from chat.tracing.context import CallerContext, traceparent
from chat.tracing.redaction import redact, redact_text
from chat.tracing.setup import deployment_metadata

PREVIEW_CHARS = 1000
PAYLOAD_VERSION = 1

# MLflow's span types and attribute keys, as plain strings: this module never imports MLflow.
CHAIN, MEMORY, CHAT_MODEL = "CHAIN", "MEMORY", "CHAT_MODEL"
CHAT_USAGE = "mlflow.chat.tokenUsage"
# Beside `mlflow.trace.user` (the stable id): who that is, as the MLflow UI shows metadata.
USERNAME_KEY = "chat.username"

_current: contextvars.ContextVar[TurnTrace | None] = contextvars.ContextVar(
    "chat_turn_trace", default=None
)


class ChatReply(Protocol):
    """What an LLM answer must offer to be recorded on its span (`chat.llm.LLMReply` does)."""

    model: str
    content: str
    prompt_tokens: int
    completion_tokens: int


def new_trace_id(otel_trace_id: int | None = None) -> str:
    """MLflow's id format for a trace in an experiment: "tr-" + the 32-hex OpenTelemetry id."""
    return f"tr-{otel_trace_id:032x}" if otel_trace_id else f"tr-{uuid.uuid4().hex}"


class Span:
    """One recorded span; without a trace to belong to, every method does nothing."""

    def __init__(self, trace: TurnTrace | None, name: str, span_type: str, parent_id: int | None):
        self.trace = trace
        self.span_id = secrets.randbits(63) or 1
        self.data: dict[str, Any] = {
            "span_id": self.span_id,
            "parent_id": parent_id,
            "name": name,
            "type": span_type,
            "start_ns": time.time_ns(),
            "end_ns": None,
            "inputs": None,
            "outputs": None,
            "attributes": {},
            "status": "OK",
            "status_message": "",
        }

    @property
    def trace_id(self) -> str | None:
        return self.trace.trace_id if self.trace is not None else None

    def trace_headers(self) -> dict[str, str]:
        """W3C headers naming this span, for an HTTP call made inside it ({} outside a trace)."""
        if self.trace is None:
            return {}
        own = traceparent(trace_id=self.trace.otel_trace_id, span_id=self.span_id)
        headers = {"traceparent": own}
        caller = self.trace.caller
        if caller is not None and caller.tracestate:
            headers["tracestate"] = caller.tracestate
        return headers

    def set_inputs(self, inputs: Any) -> None:
        self.data["inputs"] = inputs

    def set_outputs(self, outputs: Any) -> None:
        self.data["outputs"] = outputs

    def set_attribute(self, key: str, value: Any) -> None:
        self.data["attributes"][key] = value

    def set_status(self, status: str, description: str = "") -> None:
        self.data["status"], self.data["status_message"] = status, description

    def record_reply(self, reply: ChatReply) -> None:
        """An LLM span's answer, in the chat shape MLflow's UI shows, with its token usage."""
        total = reply.prompt_tokens + reply.completion_tokens
        self.set_outputs(
            {
                "model": reply.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": total,
                },
            }
        )
        usage = {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": reply.completion_tokens,
            "total_tokens": total,
        }
        self.set_attribute(CHAT_USAGE, usage)

    def end(self, error: BaseException | None = None) -> None:
        if self.data["end_ns"] is None:
            self.data["end_ns"] = time.time_ns()
        if error is not None and self.data["status"] == "OK":
            self.set_status("ERROR", f"{type(error).__name__}: {error}"[:500])


class TurnTrace(Span):
    """The root span of one chat turn, with who asked, where, which request and which deployment.

    Its `payload()` is everything MLflow needs to store the complete trace later. Called by an
    upstream service with a `traceparent` (`caller`), it is part of that caller's trace: the
    caller's trace id, and the caller's span as its root span's parent.
    """

    def __init__(
        self,
        *,
        message: str,
        user_id: int,
        username: str,
        session_id: str,
        client_request_id: str,
        endpoint: str,
        caller: CallerContext | None = None,
        join_caller: bool = True,
    ):
        self.caller = caller
        self.otel_trace_id = caller.trace_id if caller else uuid.uuid4().int
        self.trace_id_value = new_trace_id(self.otel_trace_id)
        super().__init__(self, "chat_turn", CHAIN, caller.span_id if caller else None)
        self.spans: list[Span] = [self]
        self.user_id = str(user_id)
        self.session_id = session_id
        self.client_request_id = client_request_id
        self.metadata = {**deployment_metadata(), USERNAME_KEY: username}
        self.tags = {**settings.TRACE_TAGS, "endpoint": endpoint}
        # Previews are clipped from the whole text when serialised, after any masking, so a
        # clip can never cut a value in two and let its first half through unmasked.
        self.request_text = message
        self.response_text: str | None = None
        if not join_caller:
            self.leave_caller_trace()
        if self.caller is not None:
            # The trace info may end up the caller's (whichever tracer writes it last): who
            # asked stays on this turn's own root span.
            self.set_attribute("chat.user_id", self.user_id)
            self.set_attribute(USERNAME_KEY, username)
        # Chat-shaped inputs/outputs: the MLflow UI shows them as a conversation.
        self.set_inputs(
            {
                "messages": [{"role": "user", "content": message}],
                "session_id": session_id,
                "client_request_id": client_request_id,
            }
        )

    @property
    def trace_id(self) -> str:
        return self.trace_id_value

    def leave_caller_trace(self) -> None:
        """Record under a trace id of our own, naming the caller's span in attributes instead.

        For a turn whose caller's trace id is already another turn's trace (a retry under the
        same `traceparent`, or one caller span asking twice): one trace per turn stays true.
        """
        caller = self.caller
        if caller is None:
            return
        self.caller = None
        self.otel_trace_id = uuid.uuid4().int
        self.trace_id_value = new_trace_id(self.otel_trace_id)
        self.data["parent_id"] = None
        self.set_attribute("caller.trace_id", f"{caller.trace_id:032x}")
        self.set_attribute("caller.span_id", f"{caller.span_id:016x}")

    def finish(self, *, response: str) -> None:
        """Record the turn's answer."""
        self.set_outputs(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": response}}]}
        )
        self.response_text = response

    def mark_disconnected(self, *, partial_response: str) -> None:
        """The client left mid-stream: keep what was generated and say so on the trace."""
        self.finish(response=partial_response)
        self.set_attribute("client_disconnected", True)
        self.set_status("ERROR", "client disconnected before the answer was complete")
        self.tags["client_disconnected"] = "true"

    def child(self, name: str, span_type: str) -> Span:
        span = Span(self, name, span_type, self.span_id)
        self.spans.append(span)
        return span

    def payload(self) -> dict:
        """The complete trace as JSON-ready data (call once the root span has ended)."""
        self.end()
        for span in self.spans:
            span.end()
        redacting = settings.TRACE_REDACT_PII
        mask, mask_text = (redact, redact_text) if redacting else (_unchanged, _unchanged)
        response = self.response_text
        return {
            "v": PAYLOAD_VERSION,
            "trace_id": self.trace_id,
            "state": self.data["status"],
            "start_ns": self.data["start_ns"],
            "end_ns": self.data["end_ns"],
            "client_request_id": self.client_request_id,
            "user": self.user_id,
            "session": self.session_id,
            "metadata": self.metadata,
            "tags": self.tags,
            "request_preview": _clip(mask_text(self.request_text)),
            "response_preview": _clip(mask_text(response)) if response is not None else None,
            "spans": [mask(span.data) for span in self.spans],
        }


@contextmanager
def turn_trace(
    *,
    message: str,
    user_id: int,
    username: str,
    session_id: str,
    client_request_id: str,
    endpoint: str,
    caller: CallerContext | None = None,
    join_caller: bool = True,
) -> Iterator[TurnTrace | None]:
    """Record one chat turn's trace (in its caller's trace, given one); None when tracing is off.

    An exception leaving the block ends the root span ERROR (and goes on to the caller).
    """
    if not settings.TRACING_ENABLED:
        yield None
        return
    trace = TurnTrace(
        message=message,
        user_id=user_id,
        username=username,
        session_id=session_id,
        client_request_id=client_request_id,
        endpoint=endpoint,
        caller=caller,
        join_caller=join_caller,
    )
    token = _current.set(trace)
    try:
        yield trace
    except BaseException as exc:
        trace.end(exc if not isinstance(exc, GeneratorExit) else None)
        raise
    finally:
        _current.reset(token)
    trace.end()


@contextmanager
def history_span(*, session_id: str) -> Iterator[Span]:
    """Loading the conversation's history for the prompt (a MEMORY span)."""
    with _child_span("load_history", MEMORY) as span:
        span.set_inputs({"session_id": session_id})
        yield span


@contextmanager
def llm_span(*, messages: Sequence[dict], model: str) -> Iterator[Span]:
    """One call to the LLM (a CHAT_MODEL span); record its answer with `span.record_reply`."""
    with _child_span("llm", CHAT_MODEL) as span:
        span.set_inputs({"messages": list(messages), "model": model})
        yield span


@contextmanager
def _child_span(name: str, span_type: str) -> Iterator[Span]:
    """A span inside the current turn's trace; a no-op outside one."""
    trace = _current.get()
    span = trace.child(name, span_type) if trace is not None else Span(None, name, span_type, None)
    try:
        yield span
    except BaseException as exc:
        span.end(exc if not isinstance(exc, GeneratorExit) else None)
        raise
    span.end()


def _unchanged(value: Any) -> Any:
    return value


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
