"""The spans of one chat turn, recorded in memory on the request path; no MLflow call here.

A turn's trace is recorded as plain data (names, nanosecond timestamps, inputs, outputs) and
stored in the database with the turn's answer, in the same transaction. The delivery process
(`manage.py deliver_traces`) writes it to MLflow later with the original timestamps and ids, so a
tracking-server outage, a full queue or a killed worker cannot lose it, and the request never
waits on export work.

The stored payload names the conversation's messages instead of copying them: a text that is a
`Message` row (the question, the answer, the history sent to the LLM) is stored as
`{"$message": id}`. `complete_payload` fills them in when the trace is written, then masks it
(`TRACE_REDACT_PII`) and clips its previews, so the row stays small however long the
conversation is and holds no conversation text. See docs/tracing.md.
"""

from __future__ import annotations

import contextvars
import os
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from django.conf import settings

from chat.tracing.context import CallerContext, traceparent
from chat.tracing.redaction import redact, redact_text
from chat.tracing.setup import deployment_metadata

PREVIEW_CHARS = 1000
# 2: conversation texts stored as message references (1: stored whole, masked and clipped).
PAYLOAD_VERSION = 2
MESSAGE_REF = "$message"
# A referenced message gone before its trace was written (its turn was deleted by staff).
MISSING_TEXT = "[message deleted]"

# MLflow's span types and attribute keys, as plain strings: this module never imports MLflow.
CHAIN, MEMORY, CHAT_MODEL = "CHAIN", "MEMORY", "CHAT_MODEL"
CHAT_USAGE = "mlflow.chat.tokenUsage"
# Beside `mlflow.trace.user` (the stable id): who that is, as the MLflow UI shows metadata.
USERNAME_KEY = "chat.username"
# On a trace that was sampled out and written later: why (feedback, label, review, requested).
WRITTEN_LATE_TAG = "trace.written_late"

_current: contextvars.ContextVar[TurnTrace | None] = contextvars.ContextVar(
    "chat_turn_trace", default=None
)


class PromptMessage(Protocol):
    """One message sent to the LLM (`chat.llm.ChatMessage`); `message_id` names its stored row."""

    role: str
    content: str
    message_id: int | None


class ChatReply(Protocol):
    """What an LLM answer must offer to be recorded on its span (`chat.llm.LLMReply` does)."""

    model: str
    content: str
    prompt_tokens: int
    completion_tokens: int


def message_ref(message_id: int) -> dict:
    """How a payload names a stored message's text (see `complete_payload`)."""
    return {MESSAGE_REF: message_id}


# Ids are drawn from a generator of this module's own, seeded from the system's randomness at
# import and again in every forked worker. Not the `random` module's shared one: whatever seeds
# that (Hypothesis and pytest-randomly do, before each example and test; a script might) would
# make ids repeat, and a repeated trace id fails the turn's insert.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def random_id(bits: int) -> int:
    """A non-zero random id of `bits` bits, made as OpenTelemetry's `RandomIdGenerator` makes
    trace and span ids: with `getrandbits`, no system call.

    Ids must be unique, not secret. `uuid.uuid4()` and `secrets.randbits()` read `os.urandom`,
    which lets go of the GIL for its system call: on the event loop, with a unit thread ready to
    run, taking it back waited for that thread (py-spy on a served worker at 20 turns/s: a third
    of a millisecond a turn in `uuid4` alone, most of what tracing cost a turn).
    """
    while not (value := _ids.getrandbits(bits)):
        pass
    return value


def new_trace_id(otel_trace_id: int | None = None) -> str:
    """MLflow's id format for a trace in an experiment: "tr-" + the 32-hex OpenTelemetry id."""
    return f"tr-{otel_trace_id or random_id(128):032x}"


class Span:
    """One recorded span; without a trace to belong to, every method does nothing."""

    def __init__(self, trace: TurnTrace | None, name: str, span_type: str, parent_id: int | None):
        self.trace = trace
        self.span_id = random_id(63)
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

    def timed(self, start_ns: int, end_ns: int) -> None:
        """The span's times, measured where its work ran (a unit of ORM work before the span)."""
        self.data["start_ns"], self.data["end_ns"] = start_ns, end_ns

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
        question_id: int | None = None,
    ):
        self.caller = caller
        self.otel_trace_id = caller.trace_id if caller else random_id(128)
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
        self.question = message_ref(question_id) if question_id else message
        self.answer_id: int | None = None
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
                "messages": [{"role": "user", "content": self.question}],
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
        self.otel_trace_id = random_id(128)
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

    def answer_stored(self, message_id: int) -> None:
        """The answer is this stored message: the payload names it instead of copying it."""
        self.answer_id = message_id

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
        """The trace as JSON-ready data, messages by reference (call once the root span ended)."""
        self.end()
        for span in self.spans:
            span.end()
        answer = message_ref(self.answer_id) if self.answer_id else self.response_text
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
            "request_preview": self.question,
            "response_preview": answer,
            "spans": [self._answer_by_reference(span.data) for span in self.spans],
        }

    def _answer_by_reference(self, data: dict) -> dict:
        """A span whose output is the stored answer, naming it (the root and the LLM span)."""
        choices = (data["outputs"] or {}).get("choices") if self.answer_id else None
        if not choices or choices[0]["message"]["content"] != self.response_text:
            return data
        answer = message_ref(self.answer_id)
        first = {**choices[0], "message": {**choices[0]["message"], "content": answer}}
        return {**data, "outputs": {**data["outputs"], "choices": [first, *choices[1:]]}}


def message_refs(payload: dict) -> set[int]:
    """The ids of the messages a stored payload names."""
    found: set[int] = set()
    _walk_refs(payload, found)
    return found


def complete_payload(payload: dict, texts: Mapping[int, str], *, written_late: str = "") -> dict:
    """The trace MLflow gets from a stored payload: messages filled in, masked, previews clipped.

    `texts` maps the ids `message_refs` named to their content. Masking (`TRACE_REDACT_PII`)
    covers every span's inputs, outputs, attributes and status message and both previews;
    previews are clipped after it, so a clip cannot leave half a value unmasked. A payload of
    version 1 (stored whole, already masked and clipped) comes out as it went in.
    `written_late`: why a sampled-out trace is written after all (its `trace.written_late` tag).
    """
    filled = _filled(payload, texts)
    if written_late:
        filled["tags"] = {**filled["tags"], WRITTEN_LATE_TAG: written_late}
    mask, mask_text = (redact, redact_text) if settings.TRACE_REDACT_PII else (_same, _same)
    response = filled["response_preview"]
    filled["request_preview"] = _clip(mask_text(filled["request_preview"]))
    filled["response_preview"] = _clip(mask_text(response)) if response is not None else None
    filled["spans"] = [mask(span) for span in filled["spans"]]
    return filled


def _walk_refs(value: Any, found: set[int]) -> None:
    if isinstance(value, dict):
        if MESSAGE_REF in value:
            found.add(value[MESSAGE_REF])
            return
        for item in value.values():
            _walk_refs(item, found)
    elif isinstance(value, list):
        for item in value:
            _walk_refs(item, found)


def _filled(value: Any, texts: Mapping[int, str]) -> Any:
    if isinstance(value, dict):
        if MESSAGE_REF in value:
            return texts.get(value[MESSAGE_REF], MISSING_TEXT)
        return {key: _filled(item, texts) for key, item in value.items()}
    if isinstance(value, list):
        return [_filled(item, texts) for item in value]
    return value


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
    question_id: int | None = None,
    started_ns: int | None = None,
) -> AbstractContextManager[TurnTrace | None]:
    """Record one chat turn's trace (in its caller's trace, given one); None when tracing is off.

    Use as `with turn_trace(...) as trace:`. `question_id` is the stored question's message (the
    payload names it instead of copying). `started_ns`: when the turn began (its claim, stored
    before the trace opens), else now. An exception leaving the block ends the root span ERROR
    (and goes on to the caller).
    """
    if not settings.TRACING_ENABLED:
        return nullcontext()
    trace = TurnTrace(
        message=message,
        user_id=user_id,
        username=username,
        session_id=session_id,
        client_request_id=client_request_id,
        endpoint=endpoint,
        caller=caller,
        join_caller=join_caller,
        question_id=question_id,
    )
    if started_ns is not None:
        trace.data["start_ns"] = started_ns
    return _TurnScope(trace)


def history_span(*, session_id: str) -> AbstractContextManager[Span]:
    """Loading the conversation's history for the prompt (a MEMORY span)."""
    scope = _SpanScope("load_history", MEMORY)
    scope.span.set_inputs({"session_id": session_id})
    return scope


def llm_span(*, messages: Sequence[PromptMessage], model: str) -> AbstractContextManager[Span]:
    """One call to the LLM (a CHAT_MODEL span); record its answer with `span.record_reply`.

    A message with a `message_id` is recorded by reference (filled in when written to MLflow).
    """
    scope = _SpanScope("llm", CHAT_MODEL)
    if scope.span.trace is not None:
        prompt = [{"role": m.role, "content": _text_or_ref(m)} for m in messages]
        scope.span.set_inputs({"messages": prompt, "model": model})
    return scope


# The scopes are classes, not @contextmanager generators: a turn opens three, and a generator's
# frame, its manager and the send/throw round trips were a third of what recording spans cost a
# turn (a turn's spans 76-81 -> 56-61 us on a slow machine, timed in-process 3,000 times).


def _ended_by(exc: BaseException | None) -> BaseException | None:
    """The error a span ends with: none for a generator being closed (a client gone mid-stream
    is recorded by the turn, not as this span's failure)."""
    return exc if exc is not None and not isinstance(exc, GeneratorExit) else None


class _TurnScope:
    """The turn's root span as the current trace while the `with` block runs."""

    __slots__ = ("trace", "token")

    def __init__(self, trace: TurnTrace):
        self.trace = trace
        self.token: contextvars.Token | None = None

    def __enter__(self) -> TurnTrace:
        self.token = _current.set(self.trace)
        return self.trace

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            _current.reset(self.token)
        except ValueError:
            # Left in another context than it was entered in: a streamed turn's generator
            # closed by the event loop's finalizer (its response dropped unsent), which runs it
            # in a task of its own. That context ends with the task; the turn still ends.
            _current.set(None)
        self.trace.end(_ended_by(exc))
        return False


class _SpanScope:
    """A span inside the current turn's trace, ended with the `with` block; a no-op outside one."""

    __slots__ = ("span",)

    def __init__(self, name: str, span_type: str):
        trace = _current.get()
        self.span = (
            trace.child(name, span_type) if trace is not None else Span(None, name, span_type, None)
        )

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.span.end(_ended_by(exc))
        return False


def _text_or_ref(message: PromptMessage) -> str | dict:
    return message_ref(message.message_id) if message.message_id else message.content


def _same(value: Any) -> Any:
    return value


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
