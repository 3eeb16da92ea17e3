"""How many turns one process answers at once.

Past `CHAT_MAX_TURNS_IN_FLIGHT` a turn is refused at once (503 `overloaded` with `Retry-After`)
instead of queued: a queue in front of a model that takes seconds per reply only makes every user
wait longer, and a client that gave up would still be answered. See docs/serving.md.
"""

from __future__ import annotations

import threading

from django.conf import settings

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

    def take(self) -> TurnSlot:
        """Raises: Overloaded when this process already answers its cap of turns."""
        with self._lock:
            if self.in_flight >= settings.CHAT_MAX_TURNS_IN_FLIGHT:
                self.refused += 1
                raise Overloaded(
                    "The assistant is answering as many conversations as it can; "
                    f"retry in {settings.CHAT_OVERLOAD_RETRY_AFTER_S} s.",
                    retry_after_s=settings.CHAT_OVERLOAD_RETRY_AFTER_S,
                )
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return TurnSlot(self)

    def _give_back(self) -> None:
        with self._lock:
            self.in_flight -= 1


turn_slots = TurnSlots()
