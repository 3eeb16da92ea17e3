"""How many turns one process answers at once.

Past `CHAT_MAX_TURNS_IN_FLIGHT` a turn is refused at once (503 `overloaded` with `Retry-After`)
instead of queued: a queue in front of a model that takes seconds per reply only makes every user
wait longer, and a client that gave up would still be answered. See docs/serving.md.
"""

from __future__ import annotations

import functools
import json
import threading

from django.conf import settings
from django.urls import Resolver404, resolve

from chat.exceptions import Overloaded


class TurnSlot:
    """One turn's place; `release` is idempotent (the stream and the response both call it)."""

    def __init__(self, slots: TurnSlots):
        self._slots = slots
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back()


class TurnSlots:
    def __init__(self) -> None:
        # The event loop is one thread, but `manage.py runserver` runs each request in its own.
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.refused = 0

    @property
    def full(self) -> bool:
        return self.in_flight >= settings.CHAT_MAX_TURNS_IN_FLIGHT

    def take(self) -> TurnSlot:
        """Raises: Overloaded when this process already answers its cap of turns."""
        with self._lock:
            if self.full:
                self.refused += 1
                raise overloaded()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return TurnSlot(self)

    def _give_back(self) -> None:
        with self._lock:
            self.in_flight -= 1


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


def slot_for(request) -> TurnSlot:
    """The turn's slot: the one the ASGI door took for this request, else one taken now.

    Raises: Overloaded.
    """
    scope = getattr(request, "scope", None) or {}  # ASGI requests have one; runserver's do not
    return scope.get(SCOPE_KEY) or turn_slots.take()


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
        try:
            slot = turn_slots.take()
        except Overloaded as exc:
            await _refuse(exc, send)
            return
        try:
            await app({**scope, SCOPE_KEY: slot}, receive, send)
        finally:
            slot.release()

    return guarded


async def _refuse(exc: Overloaded, send) -> None:
    body = json.dumps({"error": exc.code, "detail": exc.message}).encode()
    headers = [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
