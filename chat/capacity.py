"""How many turns one process answers at once.

Past `CHAT_MAX_TURNS_IN_FLIGHT` a turn is refused at once (503 `overloaded` with `Retry-After`)
instead of queued: a queue in front of a model that takes seconds per reply only makes every user
wait longer, and a client that gave up would still be answered. See docs/serving.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading

from django.conf import settings
from django.urls import Resolver404, resolve

from chat.exceptions import Overloaded


class TurnSlot:
    """One turn's place; `release` is idempotent (the stream and the response both call it)."""

    def __init__(self, slots: TurnSlots, weight: int):
        self._slots = slots
        self.weight = weight
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self.weight)


class TurnSlots:
    def __init__(self) -> None:
        # The event loop is one thread, but `manage.py runserver` runs each request in its own.
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.refused = 0

    def take(self, *, streamed: bool = False) -> TurnSlot:
        """A JSON turn's slot, or a streamed turn's (`CHAT_STREAM_TURN_WEIGHT` slots: each of
        its ~120 pieces goes through the event loop, ~2x a JSON turn's CPU).

        Raises: Overloaded when this process already answers its cap of turns.
        """
        weight = settings.CHAT_STREAM_TURN_WEIGHT if streamed else 1
        with self._lock:
            if self.in_flight + weight > settings.CHAT_MAX_TURNS_IN_FLIGHT:
                self.refused += 1
                raise overloaded()
            self.in_flight += weight
            self.peak = max(self.peak, self.in_flight)
        return TurnSlot(self, weight)

    def _give_back(self, weight: int) -> None:
        with self._lock:
            self.in_flight -= weight


turn_slots = TurnSlots()


def overloaded() -> Overloaded:
    return Overloaded(
        "The assistant is answering as many conversations as it can; "
        f"retry in {settings.CHAT_OVERLOAD_RETRY_AFTER_S} s.",
        retry_after_s=settings.CHAT_OVERLOAD_RETRY_AFTER_S,
    )


@functools.lru_cache(maxsize=1024)
def _takes_turn_slot(path: str) -> bool:
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return getattr(getattr(match.func, "view_class", None), "takes_turn_slot", False)


def slot_for(request, *, streamed: bool) -> TurnSlot:
    """The turn's slot: the one the ASGI door took for this request, else one taken now.

    Raises: Overloaded.
    """
    scope = getattr(request, "scope", None) or {}  # ASGI requests have one; runserver's do not
    return scope.get(SCOPE_KEY) or turn_slots.take(streamed=streamed)


SCOPE_KEY = "chat.turn_slot"


def refuse_when_full(app):
    """ASGI: a chat turn takes its slot as it arrives, or is refused (503) before Django runs.

    Under overload every step before the view (Django's request signals, authentication, each a
    hop to a thread) waits behind the turns in flight: counted from the view, the turns waiting
    there were not counted and a refusal took up to 32 s at 1,000 streamed users
    (bench/concurrency.py). Taken here, the slot covers the whole request, and a refusal takes
    no thread, no database and no time. The view finds the slot in the scope (`slot_for`).
    """

    async def guarded(scope, receive, send):
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and _takes_turn_slot(scope["path"])
        ):
            return await app(scope, receive, send)
        streamed, receive = await _streamed(scope, receive)
        try:
            slot = turn_slots.take(streamed=streamed)
        except Overloaded as exc:
            await _refuse(exc, send)
            return
        try:
            await app({**scope, SCOPE_KEY: slot}, receive, send)
        finally:
            slot.release()

    return guarded


_STREAM_TRUE = {True, "1", "true", "True", "TRUE", "yes", "on", "y", "t"}  # DRF's true values
_PEEK_LIMIT = 256 * 1024


async def _streamed(scope, receive):
    """Whether the request asks for a stream, and a `receive` that replays what was read.

    `Accept: text/event-stream` says so in the headers; `{"stream": true}` in the body, which is
    read here (a chat body is a few KB; past _PEEK_LIMIT it is left to Django, which refuses
    it) and handed to Django unchanged.
    """
    for name, value in scope.get("headers", ()):
        if name == b"accept" and b"text/event-stream" in value:
            return True, receive
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body") or size > _PEEK_LIMIT:
            break
    streamed = False
    if messages[-1]["type"] == "http.request" and not messages[-1].get("more_body"):
        with contextlib.suppress(ValueError):
            body = json.loads(b"".join(m.get("body", b"") for m in messages))
            flag = body.get("stream") if isinstance(body, dict) else None
            streamed = isinstance(flag, bool | int | str) and flag in _STREAM_TRUE

    async def replay():
        return messages.pop(0) if messages else await receive()

    return streamed, replay


async def _refuse(exc: Overloaded, send) -> None:
    body = json.dumps({"error": exc.code, "detail": exc.message}).encode()
    headers = [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
