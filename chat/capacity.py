"""How many turns one process answers at once.

Past `CHAT_MAX_TURNS_IN_FLIGHT` a turn is refused at once (503 `overloaded` with `Retry-After`)
instead of queued: a queue in front of a model that takes seconds per reply only makes every user
wait longer, and a client that gave up would still be answered. So is a turn that arrives while
the process's event loop runs its work later than `CHAT_MAX_LOOP_LAG_MS`: the cap is a count, and
what a count of turns costs depends on the machine. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import weakref

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
    """The process's turns in flight, against a cap that follows what the machine carries.

    The cap is CHAT_MAX_TURNS_IN_FLIGHT at most. While the event loop runs later than
    CHAT_MAX_LOOP_LAG_MS the turns in flight are more than the CPU gets through, so the cap is cut
    to three quarters of them (at most every CUT_EVERY_S, the time a cut takes to show); while
    it runs on time the cap grows back by one streamed turn a tick (20 a second). A count tuned
    on one machine is then never more than another carries: with the count alone, a 2-core
    machine 4-6x slower than the one it was tuned on fell 22 s behind at 1,000 streamed users.
    """

    CUT_EVERY_S = 0.5

    def __init__(self) -> None:
        # The event loop is one thread, but `manage.py runserver` runs each request in its own.
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.refused = 0
        self.adapted_cap: float | None = None  # None: the configured cap (nothing measured)
        self._last_cut = float("-inf")

    def cap(self) -> int:
        configured = settings.CHAT_MAX_TURNS_IN_FLIGHT
        if self.adapted_cap is None or settings.CHAT_MAX_LOOP_LAG_MS <= 0:
            return configured
        return min(configured, int(self.adapted_cap))

    def adapt(self, *, lag_s: float, now: float) -> None:
        """Follow the event loop's lateness `lag_s`, measured at `now` (loop time, seconds)."""
        max_lag_s = settings.CHAT_MAX_LOOP_LAG_MS / 1000
        configured = settings.CHAT_MAX_TURNS_IN_FLIGHT
        with self._lock:
            if max_lag_s <= 0:
                self.adapted_cap = None
                return
            cap = configured if self.adapted_cap is None else self.adapted_cap
            if lag_s > max_lag_s:
                if now - self._last_cut >= self.CUT_EVERY_S:
                    self._last_cut = now
                    floor = settings.CHAT_STREAM_TURN_WEIGHT  # room for one turn of any kind
                    cap = max(floor, 0.75 * min(cap, self.in_flight))
            else:
                cap = min(configured, cap + settings.CHAT_STREAM_TURN_WEIGHT)
            self.adapted_cap = cap

    def take(self, *, streamed: bool = False, loop_lag_s: float = 0.0) -> TurnSlot:
        """A JSON turn's slot, or a streamed turn's (`CHAT_STREAM_TURN_WEIGHT` slots: each of
        its ~120 pieces goes through the event loop, ~2x a JSON turn's CPU).

        `loop_lag_s`: how late the event loop that would run the turn is (`loop_lag`).
        Raises: Overloaded when this process already answers its cap of turns, or its event
        loop is later than CHAT_MAX_LOOP_LAG_MS.
        """
        weight = settings.CHAT_STREAM_TURN_WEIGHT if streamed else 1
        max_lag_s = settings.CHAT_MAX_LOOP_LAG_MS / 1000
        with self._lock:
            lagging = max_lag_s > 0 and loop_lag_s > max_lag_s
            if lagging or self.in_flight + weight > self.cap():
                self.refused += 1
                raise overloaded()
            self.in_flight += weight
            self.peak = max(self.peak, self.in_flight)
        return TurnSlot(self, weight)

    def _give_back(self, weight: int) -> None:
        with self._lock:
            self.in_flight -= weight


turn_slots = TurnSlots()


class _LoopLag:
    """How late one event loop runs what is due: a tick every TICK_S notes its own lateness.

    Work queued on an event loop waits behind everything ready before it; when the turns in
    flight bring more work than the CPU gets through, that wait grows without bound, and with it
    every answer's next piece and every refusal's 503 (bench/concurrency.py, 1,000 streamed users
    on a 2-core machine: refusals up to 22 s late with the cap alone).
    """

    TICK_S = 0.05

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._late_s = 0.0
        self._due = loop.time() + self.TICK_S
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        self._late_s = now - self._due
        self._due = now + self.TICK_S
        self._loop.call_at(self._due, self._tick)
        turn_slots.adapt(lag_s=self._late_s, now=now)

    def lag_s(self) -> float:
        """The last tick's lateness, or how overdue the next one already is: whichever is more."""
        return max(self._late_s, self._loop.time() - self._due)


_loop_lags: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loop_lag() -> float:
    """Seconds the running event loop is behind (0 at its first call: it starts measuring)."""
    loop = asyncio.get_running_loop()
    lag = _loop_lags.get(loop)
    if lag is None:
        _loop_lags[loop] = _LoopLag(loop)
        return 0.0
    return lag.lag_s()


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
        lag_s = loop_lag()  # before reading the body: a late loop reads it late too
        streamed, receive = await _streamed(scope, receive)
        try:
            slot = turn_slots.take(streamed=streamed, loop_lag_s=lag_s)
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
