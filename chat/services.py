"""Writes. Each state change has one named entry point."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from chat import selectors, tracing
from chat.exceptions import ChatError, RequestIdConflict
from chat.llm import ChatMessage, LLMReply, get_chat_model
from chat.models import ChatSession, Message, TraceExport, Turn
from chatproject.asyncdb import db_unit
from chatproject.db import prepared

logger = logging.getLogger(__name__)

TITLE_CHARS = 60


@dataclass(frozen=True)
class TurnClaim:
    """A turn this request may answer; with `replay` set, one already answered under its id."""

    turn: Turn
    message: str
    endpoint: str
    replay: Message | None = None
    caller: tracing.CallerContext | None = None  # the upstream span this turn's trace joins
    # False when the caller's trace is already another turn's (or attempt's): not joined twice.
    join_caller: bool = True
    question_id: int | None = None  # the stored question (`Message`), which the trace names
    username: str = ""  # who asked, as the trace shows them (read here: no query while answering)
    began_ns: int | None = None  # when the claim began: the turn's trace starts there
    history: LoadedHistory | None = None  # the conversation so far, read with the claim
    new_conversation: bool = False  # the claim started the conversation: it has no history


@dataclass(frozen=True)
class LoadedHistory:
    """The turns before this one, for the prompt, and when they were read (the trace's span)."""

    messages: list[ChatMessage]
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class TurnReply:
    """A turn's answer: what the JSON response and the stream's `done` event both carry."""

    turn: Turn
    reply: Message
    replayed: bool

    @property
    def trace_id(self) -> str | None:
        return self.turn.trace_id or None

    @property
    def trace_url(self) -> str | None:
        return tracing.trace_ui_url(self.trace_id)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def session_create(*, owner: AbstractBaseUser, title: str = "") -> ChatSession:
    return ChatSession.objects.create(owner=owner, title=title.strip())


def session_rename(*, session: ChatSession, title: str) -> ChatSession:
    session.title = title.strip()
    session.save(update_fields=["title", "updated_at"])
    return session


def session_delete(*, session: ChatSession) -> None:
    """Hide a conversation from its owner; its turns and the feedback on them stay for staff."""
    session.deleted_at = timezone.now()
    session.save(update_fields=["deleted_at"])


def turn_begin(
    *,
    user: AbstractBaseUser,
    message: str,
    session_id=None,
    client_request_id: str | None = None,
    endpoint: str = "chat",
    caller: tracing.CallerContext | None = None,
) -> TurnClaim:
    """Store the question and claim its turn; a repeated request id is claimed as a replay.

    A claim to answer carries the conversation's history for the prompt, read in the same unit
    of ORM work (one hop to a unit thread per turn fewer: under load each waits for a free
    thread, and on SQLite behind the writes queued for the lock).
    Answer the claim with `turn_answer` (one piece) or `turn_stream` (server-sent events).
    Raises: Http404 (someone else's or no such session), RequestIdConflict.
    """
    began_ns = time.time_ns()
    claim = _turn_claim(
        user=user,
        message=message,
        session_id=session_id,
        client_request_id=client_request_id,
        endpoint=endpoint,
        caller=caller,
    )
    if claim.replay is not None:
        return claim
    history = _history_read(claim.turn, new_conversation=claim.new_conversation)
    return dataclasses.replace(claim, began_ns=began_ns, history=history)


def _history_read(turn: Turn, *, new_conversation: bool = False) -> LoadedHistory:
    start_ns = time.time_ns()
    messages = (
        []  # the conversation starts with this turn
        if new_conversation
        else selectors.history_for_llm(
            session=turn.session, before=turn, max_turns=settings.CHAT_HISTORY_TURNS
        )
    )
    return LoadedHistory(messages=messages, start_ns=start_ns, end_ns=time.time_ns())


def _turn_claim(
    *,
    user: AbstractBaseUser,
    message: str,
    session_id,
    client_request_id: str | None,
    endpoint: str,
    caller: tracing.CallerContext | None,
) -> TurnClaim:
    client_request_id = client_request_id or new_request_id()
    # A caller's trace already recorded by another turn (or attempt) is not joined twice.
    join_caller = caller is None or not selectors.trace_recorded(otel_trace_id=caller.trace_id)
    # The turn is inserted first: nearly every request id is new, and the unique constraint
    # finds the rest (a retry, or a concurrent request that won the insert) without a query.
    try:
        session = selectors.session_get(user=user, session_id=session_id) if session_id else None
        turn, question = _turn_start(
            user=user,
            session=session,
            message=message,
            client_request_id=client_request_id,
            endpoint=endpoint,
        )
    except (IntegrityError, Http404):
        # The id is taken, or its conversation is gone: a turn of this user's with this id
        # (deleted conversations included) is replayed or claimed anew.
        existing = selectors.turn_get_by_request_id(user=user, client_request_id=client_request_id)
        if existing is None:
            raise
        return _turn_replay_or_claim(
            existing,
            message=message,
            session_id=session_id,
            endpoint=endpoint,
            caller=caller,
            join_caller=join_caller,
        )
    return TurnClaim(
        turn=turn,
        message=message,
        endpoint=endpoint,
        caller=caller,
        join_caller=join_caller,
        question_id=question.pk,
        username=user.get_username(),
        new_conversation=session is None,
    )


def _turn_start(
    *,
    user: AbstractBaseUser,
    session: ChatSession | None,
    message: str,
    client_request_id: str,
    endpoint: str,
) -> tuple[Turn, Message]:
    # The rows are built before the transaction and written with prepared statements
    # (chatproject.db.prepared): on SQLite the transaction holds the database's one write lock.
    new_session = session is None
    if new_session:
        session = ChatSession(owner=user, title=_title_from(message))
    turn = Turn(
        session=session,
        user=user,
        client_request_id=client_request_id,
        endpoint=endpoint,
        environment=settings.APP_ENVIRONMENT,
        app_version=settings.APP_VERSION,
        attempts=1,
        started_at=timezone.now(),
    )
    question = Message(session=session, turn=turn, role=Message.Role.USER, content=message)
    with transaction.atomic():
        if new_session:
            prepared.insert(session)
        prepared.insert(turn)
        prepared.insert(question)
    return turn, question


def _turn_replay_or_claim(
    turn: Turn,
    *,
    message: str,
    session_id,
    endpoint: str,
    caller: tracing.CallerContext | None,
    join_caller: bool,
) -> TurnClaim:
    """A completed turn is replayed; a failed, cancelled (or abandoned) one is claimed anew.

    Raises: RequestIdConflict when the id belongs to a different message or a running turn.
    """
    question_id, asked = turn.messages.filter(role=Message.Role.USER).values_list(
        "pk", "content"
    ).first() or (None, None)
    if asked != message or (session_id and str(session_id) != str(turn.session_id)):
        raise RequestIdConflict(
            "This X-Request-ID was already used for a different message or session. "
            "Send a new X-Request-ID for a new message."
        )
    if turn.status == Turn.Status.COMPLETED:
        reply = selectors.turn_reply(turn=turn)
        if reply is not None:
            return TurnClaim(turn=turn, message=message, endpoint=endpoint, replay=reply)
    stale_before = timezone.now() - timedelta(seconds=settings.TURN_ABANDONED_AFTER_S)
    claimable = Turn.objects.filter(
        pk=turn.pk, status__in=[Turn.Status.FAILED, Turn.Status.CANCELLED]
    ) | Turn.objects.filter(pk=turn.pk, status=Turn.Status.PENDING, started_at__lt=stale_before)
    claimed = claimable.update(
        status=Turn.Status.PENDING,
        started_at=timezone.now(),
        error="",
        partial_response="",
        attempts=turn.attempts + 1,
    )
    if not claimed:
        raise RequestIdConflict(
            "A turn with this X-Request-ID is still being answered; retry in a few seconds."
        )
    turn.refresh_from_db()
    return TurnClaim(
        turn=turn,
        message=message,
        endpoint=endpoint,
        caller=caller,
        join_caller=join_caller,
        question_id=question_id,
        username=turn.user.get_username(),
    )


async def turn_answer(claim: TurnClaim) -> TurnReply:
    """Answer a claimed turn in one piece, recording its trace (a replay answers from the database).

    The model is awaited; the database is used in short units around it, never held across it.
    A client that goes away cancels this coroutine: the turn is recorded as cancelled.
    Raises: LLMUnavailable, LLMTimeout, RequestIdConflict.
    """
    if claim.replay is not None:
        return TurnReply(turn=claim.turn, reply=claim.replay, replayed=True)
    turn = claim.turn
    started = time.perf_counter()
    trace = None
    try:
        with _trace_for(claim) as trace:
            prompt = await _prompt_for(claim)
            reply = await _llm_complete(prompt, caller=claim.caller)
            if trace is not None:
                trace.finish(response=reply.content)
    except asyncio.CancelledError:
        await _turn_cancel(turn, partial="", trace=trace, started=started)
        raise
    except Exception as exc:
        await _turn_fail(turn, error=exc, trace=trace, started=started)
        raise
    reply_message = await _turn_complete(turn, reply=reply, trace=trace, started=started)
    return TurnReply(turn=turn, reply=reply_message, replayed=False)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of a streamed turn: start, token, keepalive, done (a TurnReply) or
    error."""

    kind: str
    data: Any


async def turn_stream(claim: TurnClaim) -> AsyncIterator[StreamEvent]:
    """Answer a claimed turn piece by piece; still exactly one trace, ended with the stream.

    A replay streams the stored answer at once: no model call, no trace. A client that goes away
    midway cancels the stream: the model call stops, the turn is recorded as cancelled with what
    had been generated (so the same X-Request-ID can ask again) and its trace records the partial
    answer, tagged `client_disconnected`. A long wait for the model sends `keepalive` events.
    """
    turn = claim.turn
    if claim.replay is not None:
        yield StreamEvent("start", _start_payload(turn, trace_id=turn.trace_id or None))
        yield StreamEvent("token", {"text": claim.replay.content})
        yield StreamEvent("done", TurnReply(turn=turn, reply=claim.replay, replayed=True))
        return
    started = time.perf_counter()
    trace, stream, start_sent = None, None, False
    try:
        with _trace_for(claim) as trace:
            prompt = await _prompt_for(claim)
            model = get_chat_model()
            with tracing.llm_span(messages=prompt, model=model.model) as span:
                stream = model.stream(prompt, trace_headers=_trace_headers(span, claim.caller))
                # The model call starts before the start event goes out: sent first, the event
                # held the call back by a pass or more of the busy event loop (docs/serving.md).
                pieces = stream.with_keepalive(settings.CHAT_STREAM_KEEPALIVE_S)
                start_sent = True
                yield StreamEvent("start", _start_payload(turn, trace_id=_id(trace)))
                async for piece in pieces:
                    if piece is None:
                        yield StreamEvent("keepalive", None)
                    else:
                        yield StreamEvent("token", {"text": piece})
                span.record_reply(stream.reply)
            if trace is not None:
                trace.finish(response=stream.reply.content)
        reply_message = await _turn_complete(turn, reply=stream.reply, trace=trace, started=started)
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away (Django cancels the response; a closed generator is the same),
        # perhaps before the pieces were asked for: the model call stops here.
        if stream is not None:
            stream.stop_reading()
        partial = stream.text_so_far if stream else ""
        await _turn_cancel(turn, partial=partial, trace=trace, started=started)
        raise
    except ChatError as exc:
        await _turn_fail(turn, error=exc, trace=trace, started=started)
        if not start_sent:
            yield StreamEvent("start", _start_payload(turn, trace_id=_id(trace)))
        yield StreamEvent("error", {"error": exc.code, "detail": exc.message})
        return
    except Exception as exc:
        # The response has already started (200): say so in the stream rather than cut it.
        logger.exception("streamed turn crashed turn_id=%s", turn.pk)
        await _turn_fail(turn, error=exc, trace=trace, started=started)
        if not start_sent:
            yield StreamEvent("start", _start_payload(turn, trace_id=_id(trace)))
        yield StreamEvent(
            "error", {"error": "internal_error", "detail": "The answer failed; please retry."}
        )
        return
    yield StreamEvent("done", TurnReply(turn=turn, reply=reply_message, replayed=False))


def _id(trace: tracing.TurnTrace | None) -> str | None:
    return trace.trace_id if trace is not None else None


def _start_payload(turn: Turn, *, trace_id: str | None) -> dict:
    return {
        "session_id": str(turn.session_id),
        "client_request_id": turn.client_request_id,
        "trace_id": trace_id,
    }


def _trace_for(claim: TurnClaim):
    """The root span of the claimed turn's trace: its user, conversation, request id and caller."""
    return tracing.turn_trace(
        message=claim.message,
        user_id=claim.turn.user_id,
        username=claim.username,
        session_id=str(claim.turn.session_id),
        client_request_id=claim.turn.client_request_id,
        endpoint=claim.endpoint,
        caller=claim.caller,
        join_caller=claim.join_caller,
        question_id=claim.question_id,
        started_ns=claim.began_ns,
    )


async def _prompt_for(claim: TurnClaim) -> list[ChatMessage]:
    turn = claim.turn
    with tracing.history_span(session_id=str(turn.session_id)) as span:
        if claim.history is not None:  # read with the claim (`turn_begin`): its own times
            history = claim.history.messages
            span.timed(claim.history.start_ns, claim.history.end_ns)
        else:
            history = await _history_for(turn)
        span.set_outputs({"messages": len(history)})
    return [
        ChatMessage("system", settings.LLM_SYSTEM_PROMPT),
        *history,
        ChatMessage("user", claim.message, message_id=claim.question_id),
    ]


@db_unit
def _history_for(turn: Turn) -> list[ChatMessage]:
    return _history_read(turn).messages


def _trace_headers(span: tracing.Span, caller: tracing.CallerContext | None) -> dict[str, str]:
    """The LLM call's trace context: its span's, or with tracing off the caller's, passed on."""
    return span.trace_headers() or tracing.passed_on(caller)


async def _llm_complete(
    prompt: list[ChatMessage], *, caller: tracing.CallerContext | None
) -> LLMReply:
    model = get_chat_model()
    with tracing.llm_span(messages=prompt, model=model.model) as span:
        reply = await model.complete(prompt, trace_headers=_trace_headers(span, caller))
        span.record_reply(reply)
    return reply


@db_unit
def _turn_complete(
    turn: Turn, *, reply: LLMReply, trace: tracing.TurnTrace | None, started: float
) -> Message:
    """Store the answer and its trace in one transaction.

    Raises: RequestIdConflict when a newer attempt claimed the turn meanwhile.
    """
    now = timezone.now()
    fields = {
        "status": Turn.Status.COMPLETED,
        "trace_id": _id(trace) or "",
        "model": reply.model,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "latency_ms": _elapsed_ms(started),
        "completed_at": now,
        "error": "",
        "partial_response": "",
    }
    reply_message = Message(
        session_id=turn.session_id, turn=turn, role=Message.Role.ASSISTANT, content=reply.content
    )
    with transaction.atomic():
        # Only the attempt that holds the turn may finish it (a retry can claim a turn it
        # believes abandoned); otherwise nothing is written and this attempt reports a conflict.
        if not prepared.update(Turn, where=_this_attempt_is(turn), values=fields):
            raise RequestIdConflict("This turn was retried meanwhile; the retry answers it.")
        prepared.insert(reply_message)
        prepared.update(ChatSession, where={"id": turn.session_id}, values={"updated_at": now})
        if trace is not None:
            trace.answer_stored(reply_message.pk)
        _trace_store(turn, trace)
        fields["trace_id"] = _id(trace) or ""  # it changes when the trace left a caller's trace
    for name, value in fields.items():
        setattr(turn, name, value)
    return reply_message


def _this_attempt_is(turn: Turn) -> dict:
    return {"id": turn.pk, "attempts": turn.attempts, "status": Turn.Status.PENDING}


def _this_attempt(turn: Turn):
    return Turn.objects.filter(**_this_attempt_is(turn))


@db_unit
def _turn_fail(
    turn: Turn, *, error: BaseException, trace: tracing.TurnTrace | None, started: float
) -> None:
    _turn_end(
        turn,
        status=Turn.Status.FAILED,
        error=f"{type(error).__name__}: {error}"[:2000],
        trace=trace,
        started=started,
    )
    logger.warning(
        "chat turn failed turn_id=%s request_id=%s error=%s",
        turn.pk,
        turn.client_request_id,
        type(error).__name__,
    )


async def _turn_cancel(
    turn: Turn, *, partial: str, trace: tracing.TurnTrace | None, started: float
) -> None:
    """The client went away: record the turn as cancelled with what had been generated.

    Shielded: the request being cancelled must not cancel the record of it.
    """
    if trace is not None:
        trace.mark_disconnected(partial_response=partial)
    await asyncio.shield(_turn_cancel_store(turn, partial=partial, trace=trace, started=started))
    logger.info(
        "chat turn cancelled by the client turn_id=%s request_id=%s chars=%s",
        turn.pk,
        turn.client_request_id,
        len(partial),
    )


@db_unit
def _turn_cancel_store(
    turn: Turn, *, partial: str, trace: tracing.TurnTrace | None, started: float
) -> None:
    _turn_end(
        turn,
        status=Turn.Status.CANCELLED,
        error=f"ClientDisconnected: after {len(partial)} characters",
        trace=trace,
        started=started,
        partial_response=partial,
    )


def _turn_end(
    turn: Turn,
    *,
    status: str,
    error: str,
    trace: tracing.TurnTrace | None,
    started: float,
    partial_response: str = "",
) -> None:
    # update(), not save(): the turn may have been deleted, or claimed by a newer attempt.
    with transaction.atomic():
        ended = _this_attempt(turn).update(
            status=status,
            trace_id=_id(trace) or "",
            error=error,
            latency_ms=_elapsed_ms(started),
            partial_response=partial_response,
        )
        if ended:
            _trace_store(turn, trace)


def _trace_store(turn: Turn, trace: tracing.TurnTrace | None) -> None:
    """Queue the attempt's complete trace for delivery to MLflow (inside the turn's transaction)."""
    if trace is None:
        return
    if trace.caller is None:
        # Our own random 128-bit trace id: no other row holds it, so no savepoint is needed.
        _trace_enqueue(turn, trace)
        return
    try:
        with transaction.atomic():  # a savepoint: the turn's transaction goes on either way
            _trace_enqueue(turn, trace)
    except IntegrityError:
        # Two turns joined one caller's trace at once (`_trace_for` checked before either had
        # stored it): the later one takes a trace id of its own, as it would have sequentially.
        trace.leave_caller_trace()
        _trace_enqueue(turn, trace)
        Turn.objects.filter(pk=turn.pk).update(trace_id=trace.trace_id)
        turn.trace_id = trace.trace_id


def _trace_enqueue(turn: Turn, trace: tracing.TurnTrace) -> None:
    # Sampled out or not, the row is the whole trace: it can be written later (trace_request).
    TraceExport.objects.enqueue(
        turn_id=turn.pk,
        trace_id=trace.trace_id,
        payload=trace.payload(),
        sampled=tracing.trace_sampled(trace_id=trace.trace_id, endpoint=turn.endpoint),
    )


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _title_from(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
