"""What the management commands share: reading a time option, and the delivery workers' loop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from django.core.management.base import CommandError
from django.db import close_old_connections
from django.utils.dateparse import parse_datetime

logger = logging.getLogger(__name__)


def parse_when(value: str | None, option: str) -> datetime | None:
    """A date or ISO 8601 time from the command line. Raises: CommandError."""
    if not value:
        return None
    parsed = parse_datetime(value) or parse_datetime(f"{value}T00:00:00+00:00")
    if parsed is None:
        raise CommandError(f"{option} {value!r} is not a date or ISO 8601 time")
    return parsed


def summary(counts: Counter) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "nothing due"


def run_worker(
    *,
    name: str,
    deliver: Callable[[], Counter],
    batch: int,
    poll_s: float,
    chores: Callable[[], list[str]],
    chores_every_s: float,
    write: Callable[[str], None],
) -> None:
    """Deliver until SIGTERM/SIGINT: `deliver()` a batch, sleep when less than a batch was due,
    and run `chores()` (which return lines to log) every `chores_every_s`.

    The worker outlives a failing pass (the database restarting, say): nothing is lost, rows stay
    pending and a claimed row's lease expires.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    next_chores = time.monotonic()
    while not stop.is_set():
        try:
            close_old_connections()
            if time.monotonic() >= next_chores:
                next_chores = time.monotonic() + chores_every_s
                for line in chores():
                    write(line)
            counts = deliver()
        except Exception:
            logger.exception("%s pass failed; retrying shortly", name)
            stop.wait(5)
            continue
        if counts:
            write(f"{name}: {summary(counts)}")
        if sum(counts.values()) < batch:
            stop.wait(poll_s)
    write(f"{name} stopped")
