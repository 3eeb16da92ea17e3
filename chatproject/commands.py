"""What the management commands share: reading a time option, and the delivery workers' loop."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from django.core.management.base import CommandError
from django.db import close_old_connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime

logger = logging.getLogger(__name__)


_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(value: str | None, option: str) -> datetime | None:
    """A date, an ISO 8601 time, or a time ago (`30m`, `6h`, `1d`) from the command line.

    Raises: CommandError.
    """
    if not value:
        return None
    if ago := _AGO.match(value.strip()):
        return timezone.now() - timedelta(seconds=int(ago[1]) * _UNIT_S[ago[2]])
    parsed = parse_datetime(value) or parse_datetime(f"{value}T00:00:00+00:00")
    if parsed is None:
        raise CommandError(
            f"{option} {value!r} is not a date, an ISO 8601 time or a time ago such as 1d or 6h"
        )
    # A date, or a time without an offset, is in the project's time zone (UTC).
    return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed


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
