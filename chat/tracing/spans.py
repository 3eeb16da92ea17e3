"""The spans of one chat turn: a root span with who, where and which request, and its children.

Nothing here raises into a chat turn: MLflow trouble is logged and the turn goes on. Trace ids are
read from the live span inside the traced code, never from `mlflow.get_last_active_trace_id()`
(process-wide, wrong under threads).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import mlflow
from django.conf import settings
from mlflow.entities import SpanType
from mlflow.tracing.constant import SpanAttributeKey

from chat.tracing.errors import short
from chat.tracing.setup import deployment_metadata, is_ready

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 1000

_current_root: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "chat_trace_root", default=None
)


class ChatReply(Protocol):
    """What an LLM answer must offer to be recorded on its span (`chat.llm.LLMReply` does)."""

    model: str
    content: str
    prompt_tokens: int
    completion_tokens: int


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
        self.set_attribute(SpanAttributeKey.CHAT_USAGE, usage)

    def _call(self, method: str, *args: Any) -> None:
        if self.live is None:
            return
        try:
            getattr(self.live, method)(*args)
        except Exception as exc:
            logger.warning("mlflow span.%s failed error=%s", method, short(exc))


@contextmanager
def _mlflow_span(name: str, span_type: str) -> Iterator[Span]:
    try:
        manager = mlflow.start_span(name=name, span_type=span_type)
        live = manager.__enter__()
    except Exception as exc:
        logger.warning("mlflow start_span failed span=%s error=%s", name, short(exc))
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
            logger.warning("mlflow span end failed span=%s error=%s", name, short(err))


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
def history_span(*, session_id: str) -> Iterator[Span]:
    """Loading the conversation's history for the prompt (a MEMORY span)."""
    with _child_span("load_history", SpanType.MEMORY) as span:
        span.set_inputs({"session_id": session_id})
        yield span


@contextmanager
def llm_span(*, messages: Sequence[dict], model: str) -> Iterator[Span]:
    """One call to the LLM (a CHAT_MODEL span); record its answer with `span.record_reply`."""
    with _child_span("llm", SpanType.CHAT_MODEL) as span:
        span.set_inputs({"messages": list(messages), "model": model})
        yield span


@contextmanager
def _child_span(name: str, span_type: str) -> Iterator[Span]:
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
        logger.warning("mlflow update_current_trace failed error=%s", short(exc))


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
