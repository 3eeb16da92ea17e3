"""Writes: delivering recorded traces to MLflow, and closing turns whose worker died.

The delivery process (`manage.py deliver_traces --loop`) calls these. Several may run at once, on
several machines, against one database: a pass claims its rows with one conditional UPDATE (a
lease with this pass's token), so no two passes write the same row at the same time, and a
crashed pass's rows are taken over when its lease expires. Writing a trace is an upsert, so a
takeover after a crash mid-write adds nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from chat import selectors, tracing
from chat.models import TraceExport, Turn

logger = logging.getLogger(__name__)


def due(now: datetime) -> Q:
    """Rows whose next attempt is due and that no deliverer holds a lease on."""
    return (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)) & (
        Q(leased_until__isnull=True) | Q(leased_until__lt=now)
    )


def trace_deliver_due(
    *, limit: int | None = None, trace_ids: Sequence[str] | None = None
) -> Counter:
    """Write one batch of due traces (of these only, if given) to MLflow; returns counts by outcome.

    Outcomes: exported, retry (MLflow did not take it; tried again with backoff), failed (MLflow
    refused it TRACE_MAX_ATTEMPTS times; counted and visible, `audit_traces --repair` retries).
    Sampled-out rows are not pending, so they are never taken (see `trace_request`).
    """
    limit = limit or settings.TRACE_DELIVERY_BATCH
    now = timezone.now()
    pending = TraceExport.objects.filter(state=TraceExport.State.PENDING)
    if trace_ids is not None:
        pending = pending.filter(trace_id__in=list(trace_ids))
    # A read first: on SQLite every transaction takes the write lock, and requests need it more
    # than an idle deliverer polling twice a second.
    if not pending.filter(due(now)).exists():
        return Counter()
    owner = uuid.uuid4().hex
    with transaction.atomic():
        # SKIP LOCKED (PostgreSQL): concurrent deliverers take different rows instead of racing
        # for the same ones; the conditional UPDATE below is what guarantees one owner anyway.
        ids = list(
            pending.filter(due(now))
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return Counter()
        pending.filter(due(now), pk__in=ids).update(
            leased_until=now + timedelta(seconds=settings.TRACE_LEASE_S),
            lease_owner=owner,
            attempts=F("attempts") + 1,
        )
    rows = list(TraceExport.objects.filter(lease_owner=owner, pk__in=ids))
    if not rows:
        return Counter()
    try:
        errors = tracing.write_traces(selectors.trace_payloads(rows))
    except tracing.TrackingUnavailable as exc:
        _retry_later(rows, owner, f"TrackingUnavailable: {exc}", outage=True)
        return Counter(retry=len(rows))
    done = [row.pk for row in rows if row.trace_id not in errors]
    marked = TraceExport.objects.filter(pk__in=done, lease_owner=owner).update(
        state=TraceExport.State.EXPORTED,
        exported_at=timezone.now(),
        leased_until=None,
        lease_owner="",
        last_error="",
        next_attempt_at=None,
    )
    if marked < len(done):
        _unwrite_deleted(rows, done)
    counts = Counter(exported=len(done))
    for row in rows:
        if row.trace_id in errors:
            counts[_retry_later([row], owner, errors[row.trace_id], outage=False)] += 1
    return counts


def _unwrite_deleted(rows: list[TraceExport], done: list[int]) -> None:
    """Rows deleted while we wrote them (their person was erased): take the traces back out.

    An erasure deletes the rows first and the traces after; a write that was already under way
    can land after its delete, so the writer removes what it wrote. (A row whose lease another
    deliverer took over still exists and is left alone.)
    """
    still = set(TraceExport.objects.filter(pk__in=done).values_list("pk", flat=True))
    gone = [row.trace_id for row in rows if row.pk in done and row.pk not in still]
    if not gone:
        return
    try:
        tracing.erase_traces(trace_ids=gone)
        logger.info("removed traces whose rows were deleted during delivery count=%s", len(gone))
    except tracing.TrackingUnavailable as exc:
        # The erasure's own check finds them by user id and deletes them on its next run.
        logger.warning("could not remove traces deleted during delivery error=%s", str(exc)[:200])


def _retry_later(rows: list[TraceExport], owner: str, error: str, *, outage: bool) -> str:
    """Back off; an outage is waited out for as long as it lasts, a refusal only so many times."""
    outcome = "retry"
    for row in rows:
        attempts = row.attempts
        delay = min(
            settings.TRACE_RETRY_BASE_S * 2 ** max(attempts - 1, 0), settings.TRACE_RETRY_MAX_S
        )
        fields = {
            "leased_until": None,
            "lease_owner": "",
            "last_error": error[:2000],
            "next_attempt_at": timezone.now() + timedelta(seconds=delay),
        }
        if not outage and attempts >= settings.TRACE_MAX_ATTEMPTS:
            fields.update(state=TraceExport.State.FAILED, next_attempt_at=None)
            outcome = "failed"
        TraceExport.objects.filter(pk=row.pk, lease_owner=owner).update(**fields)
    log = logger.error if outcome == "failed" else logger.info
    log("trace delivery %s traces=%s error=%s", outcome, len(rows), error[:200])
    return outcome


def trace_request(*, trace_ids: Iterable[str] | QuerySet, reason: str) -> int:
    """Have these traces written to MLflow after all, if they were sampled out; returns how many.

    The row becomes pending (the delivery worker writes it within TRACE_POLL_INTERVAL_S) and keeps
    `reason` (a `TraceExport.LateReason`), which the trace carries as its `trace.written_late` tag.
    Traces already written, waiting or failed are left as they are, so asking twice, or for a
    trace that was never sampled out, does nothing. Feedback on the turn waits for the write.
    """
    if not isinstance(trace_ids, QuerySet):
        trace_ids = [t for t in trace_ids if t]
        if not trace_ids:
            return 0
    now = timezone.now()
    asked = TraceExport.objects.filter(
        state=TraceExport.State.SAMPLED_OUT, trace_id__in=trace_ids
    ).update(
        state=TraceExport.State.PENDING,
        written_late=reason,
        requested_at=now,
        attempts=0,
        next_attempt_at=None,
        last_error="",
    )
    if asked:
        logger.info("sampled-out traces asked for count=%s reason=%s", asked, reason)
    return asked


@dataclass(frozen=True)
class TraceWrite:
    """What `traces_write` did with the traces of the turns it was given."""

    turns: int  # turns given
    asked: int  # sampled-out traces asked for (now written, or queued for the worker)
    written: int  # of the given turns' traces, in MLflow now (written earlier included)
    waiting: int  # still pending: held by a worker, MLflow down, or past the deadline
    failed: int  # MLflow refused them (see the row's last error)
    untraced: int  # turns without a trace (tracing was off, or no answer yet)


def traces_write(
    *,
    turns: QuerySet[Turn],
    reason: str = TraceExport.LateReason.REQUESTED,
    deadline_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TraceWrite:
    """Write these turns' traces to MLflow now, sampled-out ones included ("trace this").

    Sampled-out traces are asked for (`trace_request`), then every pending one of them is written
    here in batches, as the delivery worker would (same claim, so the two never write one row at
    once). What a worker holds, or what waits out an outage, is left to the worker.
    """
    started = time.monotonic()
    trace_ids = list(turns.exclude(trace_id="").values_list("trace_id", flat=True))
    untraced = turns.filter(trace_id="").count()
    asked = trace_request(trace_ids=trace_ids, reason=reason)
    rows = TraceExport.objects.filter(trace_id__in=trace_ids)
    waiting = list(rows.filter(state=TraceExport.State.PENDING).values_list("trace_id", flat=True))
    total, written = len(waiting), 0
    while waiting and (deadline_s is None or time.monotonic() - started < deadline_s):
        counts = trace_deliver_due(trace_ids=waiting[: settings.TRACE_DELIVERY_BATCH])
        written += counts["exported"]
        if progress:
            progress(written, total)
        if counts["retry"] and not counts["exported"]:
            break  # MLflow is not taking them now: the worker retries with backoff
        waiting = list(
            rows.filter(state=TraceExport.State.PENDING).values_list("trace_id", flat=True)
        )
        if waiting and not counts:
            time.sleep(0.2)  # a worker holds them: it is writing them
            if deadline_s is None and time.monotonic() - started > settings.TRACE_LEASE_S * 2:
                break
    by_state = dict(rows.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    return TraceWrite(
        turns=len(trace_ids) + untraced,
        asked=asked,
        written=by_state.get(TraceExport.State.EXPORTED, 0),
        waiting=by_state.get(TraceExport.State.PENDING, 0),
        failed=by_state.get(TraceExport.State.FAILED, 0),
        untraced=untraced,
    )


def trace_retry(*, trace_ids: list[str] | None = None) -> int:
    """Queue failed traces (or these traces, whatever their state) for delivery now."""
    rows = TraceExport.objects.all()
    rows = (
        rows.filter(trace_id__in=trace_ids)
        if trace_ids is not None
        else rows.filter(state=TraceExport.State.FAILED)
    )
    return rows.update(
        state=TraceExport.State.PENDING, attempts=0, next_attempt_at=None, last_error=""
    )


def trace_resume_after_outage() -> int:
    """When the tracking store answers again, deliver at once what was backing off."""
    now = timezone.now()
    waiting = TraceExport.objects.filter(
        state=TraceExport.State.PENDING,
        last_error__startswith="TrackingUnavailable",
        next_attempt_at__gt=now,
    )
    if not waiting.exists() or not tracing.tracking_reachable():
        return 0
    return waiting.update(next_attempt_at=now)


def turn_close_abandoned() -> list[int]:
    """Close turns whose worker died mid-answer (pending past TURN_ABANDONED_AFTER_S).

    They become failed, so a client retry with the same X-Request-ID answers them. Returns their
    ids (for the worker's log).
    """
    cutoff = timezone.now() - timedelta(seconds=settings.TURN_ABANDONED_AFTER_S)
    stale = Turn.objects.filter(status=Turn.Status.PENDING, started_at__lt=cutoff)
    ids = list(stale.values_list("id", flat=True)[:1000])
    if ids:
        stale.filter(pk__in=ids).update(
            status=Turn.Status.FAILED,
            error=(
                "Abandoned: the worker answering it stopped "
                f"(no answer {settings.TURN_ABANDONED_AFTER_S:.0f} s after it started)."
            ),
        )
        logger.warning("closed abandoned turns count=%s ids=%s", len(ids), ids[:20])
    return ids
