"""Retention: what is older than the configured days goes, a batch at a time, then a check.

Two settings, both off by default (docs/deploy.md, "Retention"):
- CONVERSATION_RETENTION_DAYS: conversations whose last turn is older go, whole, with their
  turns, messages, feedback and trace rows (database only; a conversation active yesterday is
  never cut in half).
- TRACE_RETENTION_DAYS: traces older go from MLflow (rows, spans, assessments, files, the way an
  erasure removes them) and their trace rows from the app's database, so a sampled-out turn that
  old can no longer be traced on demand. Found two ways: the app's trace rows, then an MLflow
  search on the trace's start time for any the database no longer names (a conversation
  retention removed, a crash between the two steps).

A pass (`RetentionPass`) fixes its cut-offs when it starts and counts what it removed; it is
completed only when the check (the same MLflow search, and the database) finds nothing older.
The feedback worker starts one every RETENTION_INTERVAL_S and works through it a few batches per
chore, so a large first pass never holds up feedback delivery; `manage.py apply_retention` runs
one to the end with progress. When the tracking store is down the pass waits (`pending_mlflow`)
and goes on where it stopped: database rows naming a trace are deleted only after the trace is.
Every step is safe to repeat.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat import tracing
from chat.models import ChatSession, Message, TraceExport, Turn
from feedback.models import Feedback
from privacy.models import RetentionPass
from privacy.services import admin_log_about, delete_counted

logger = logging.getLogger(__name__)

# The worker's share of each chore: batches until this much time went by.
CHORE_BUDGET_S = 2.0


def retention_configured() -> bool:
    return bool(settings.TRACE_RETENTION_DAYS or settings.CONVERSATION_RETENTION_DAYS)


def retention_pass_start(*, via: str, now: datetime | None = None) -> RetentionPass:
    """A new pass with its cut-offs fixed now (None where that retention is off)."""
    now = now or timezone.now()

    def cutoff(days: int | None) -> datetime | None:
        return now - timedelta(days=days) if days else None

    return RetentionPass.objects.create(
        via=via,
        started_at=now,
        trace_cutoff=cutoff(settings.TRACE_RETENTION_DAYS),
        conversation_cutoff=cutoff(settings.CONVERSATION_RETENTION_DAYS),
    )


def retention_step(
    *, retention: RetentionPass, batch: int | None = None, say: Callable[[str], None] | None = None
) -> bool:
    """Do the pass's next batch; True once the pass is over for now (completed, or waiting for
    MLflow), False if there is more to do."""
    batch = batch or settings.RETENTION_BATCH
    say = say or (lambda line: None)
    removed: Counter = Counter()
    try:
        if retention.conversation_cutoff and _conversations_batch(
            retention.conversation_cutoff, batch, removed
        ):
            say(f"  conversations: {_counts(removed)}")
        elif retention.trace_cutoff and _trace_rows_batch(retention.trace_cutoff, batch, removed):
            say(f"  trace rows and their traces: {_counts(removed)}")
        elif retention.trace_cutoff and _stray_traces_batch(retention.trace_cutoff, batch, removed):
            say(f"  traces the database no longer names: {_counts(removed)}")
        else:
            _check(retention, batch, say)
            return True
    except tracing.TrackingUnavailable as exc:
        retention.state = RetentionPass.State.PENDING_MLFLOW
        retention.last_error = f"TrackingUnavailable: {exc}"[:2000]
        logger.warning("retention pass waits for mlflow pass_id=%s error=%s", retention.pk, exc)
        return True
    finally:
        if removed:
            retention.removed = dict(Counter(retention.removed) + removed)
        retention.save()
    if retention.state == RetentionPass.State.PENDING_MLFLOW:
        retention.state = RetentionPass.State.RUNNING
        retention.last_error = ""
        retention.save(update_fields=["state", "last_error"])
    return False


def _conversations_batch(cutoff: datetime, batch: int, removed: Counter) -> bool:
    ids = list(
        ChatSession.objects.filter(updated_at__lt=cutoff)
        .order_by("updated_at")[:batch]
        .values_list("pk", flat=True)
    )
    if not ids:
        return False
    with transaction.atomic():
        turns = Turn.objects.filter(session_id__in=ids)
        messages = Message.objects.filter(session_id__in=ids)
        feedback = Feedback.objects.filter(turn__session_id__in=ids)
        removed["admin_log"] += delete_counted(
            admin_log_about(
                (ChatSession, ids),
                (Turn, turns.values_list("pk", flat=True)),
                (Message, messages.values_list("pk", flat=True)),
                (Feedback, feedback.values_list("pk", flat=True)),
            )
        )
        removed["feedback"] += delete_counted(feedback)
        removed["trace_rows"] += delete_counted(
            TraceExport.objects.filter(turn__session_id__in=ids)
        )
        removed["messages"] += delete_counted(messages)
        removed["turns"] += delete_counted(turns)
        removed["sessions"] += delete_counted(ChatSession.objects.filter(pk__in=ids))
    return True


def _old_trace_rows(cutoff: datetime):
    # A row a deliverer holds right now is left for the next batch (its write could land after
    # our delete); it is old, so nothing normally holds it.
    return TraceExport.objects.filter(created_at__lt=cutoff).exclude(
        leased_until__gt=timezone.now()
    )


def _trace_rows_batch(cutoff: datetime, batch: int, removed: Counter) -> bool:
    rows = list(
        _old_trace_rows(cutoff).order_by("created_at")[:batch].values_list("pk", "trace_id")
    )
    if not rows:
        return False
    erased = tracing.erase_traces(trace_ids=[trace_id for _, trace_id in rows])
    removed["traces"] += erased.traces
    removed["artifacts"] += erased.artifacts
    removed["trace_rows"] += delete_counted(
        TraceExport.objects.filter(pk__in=[pk for pk, _ in rows])
    )
    return True


def _stray_traces_batch(cutoff: datetime, batch: int, removed: Counter) -> bool:
    trace_ids = tracing.old_trace_ids(before_ms=_ms(cutoff), limit=batch)
    if not trace_ids:
        return False
    erased = tracing.erase_traces(trace_ids=trace_ids)
    removed["traces"] += erased.traces
    removed["artifacts"] += erased.artifacts
    return True


def _check(retention: RetentionPass, batch: int, say: Callable[[str], None]) -> None:
    """Search for anything older than the cut-offs; complete the pass only if nothing is."""
    remaining = {}
    if retention.conversation_cutoff:
        remaining["sessions"] = ChatSession.objects.filter(
            updated_at__lt=retention.conversation_cutoff
        ).count()
    if retention.trace_cutoff:
        remaining["trace_rows"] = TraceExport.objects.filter(
            created_at__lt=retention.trace_cutoff
        ).count()
        cutoff_ms = _ms(retention.trace_cutoff)
        say(f"checking: MLflow search attributes.timestamp_ms < {cutoff_ms}")
        remaining["traces"] = len(tracing.old_trace_ids(before_ms=cutoff_ms, limit=batch))
    retention.remaining = remaining
    if any(remaining.values()):
        retention.last_error = f"the check found {_counts(remaining)} older; run again"
        retention.state = RetentionPass.State.RUNNING
    else:
        retention.state = RetentionPass.State.COMPLETED
        retention.finished_at = timezone.now()
        retention.last_error = ""
    logger.info(
        "retention pass %s pass_id=%s removed=%s remaining=%s",
        retention.state,
        retention.pk,
        retention.removed,
        remaining,
    )


def retention_run(
    *,
    via: str = RetentionPass.Via.COMMAND,
    batch: int | None = None,
    say: Callable[[str], None] | None = None,
) -> RetentionPass:
    """One whole pass (the command): batches until done or MLflow is away, with progress."""
    say = say or (lambda line: None)
    retention = retention_pass_start(via=via)
    say(
        "retention pass "
        f"{retention.pk}: traces before {_when(retention.trace_cutoff)}, "
        f"conversations last active before {_when(retention.conversation_cutoff)}"
    )
    while not retention_step(retention=retention, batch=batch, say=say):
        pass
    if retention.state == RetentionPass.State.RUNNING:  # the check found some: once more
        while not retention_step(retention=retention, batch=batch, say=say):
            pass
    return retention


def retention_due(*, now: datetime | None = None) -> list[str]:
    """The feedback worker's chore: start a pass every RETENTION_INTERVAL_S and work through the
    open one for up to CHORE_BUDGET_S; returns lines for its log."""
    if not retention_configured():
        return []
    now = now or timezone.now()
    retention = (
        RetentionPass.objects.exclude(state=RetentionPass.State.COMPLETED)
        .order_by("-started_at")
        .first()
    )
    if retention is None:
        last = RetentionPass.objects.order_by("-started_at").first()
        if last and now - last.started_at < timedelta(seconds=settings.RETENTION_INTERVAL_S):
            return []
        retention = retention_pass_start(via=RetentionPass.Via.WORKER, now=now)
    before = Counter(retention.removed)
    deadline = time.monotonic() + CHORE_BUDGET_S
    while not retention_step(retention=retention) and time.monotonic() < deadline:
        pass
    done = Counter(retention.removed) - before
    if not done and retention.state == RetentionPass.State.RUNNING:
        return []
    line = f"retention pass {retention.pk}: {retention.state}"
    if done:
        line += f", removed {_counts(done)}"
    if retention.last_error:
        line += f" ({retention.last_error[:120]})"
    return [line]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "(off)"


def _counts(counts) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()) if n) or "nothing"
