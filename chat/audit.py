"""Checking MLflow against the database, which is the source of truth, and repairing it.

`manage.py audit_traces` (feedback app) calls these for traces, and feedback's own audit for
assessments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat import selectors, tracing
from chat.models import TraceExport, Turn

logger = logging.getLogger(__name__)

BATCH = 100
Progress = Callable[[str, int, int], None] | None


@dataclass
class TraceAudit:
    checked: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # trace id -> what is wrong
    without_turn: list[str] = field(default_factory=list)
    pending: int = 0  # not delivered yet (the worker is on it): visible, not wrong
    overdue: list[str] = field(default_factory=list)  # pending for longer than a minute
    failed: list[str] = field(default_factory=list)  # MLflow refused them; repair retries
    abandoned_turns: list[int] = field(default_factory=list)  # pending turns past the bound
    # Sampled out (TRACE_SAMPLE_RATIO): stored, deliberately not in MLflow. Neither lost nor
    # pending; written if anyone asks (`traces write`, feedback, a label, the review queue).
    sampled_out: int = 0
    # Answered turns by where their trace is (`selectors.trace_accounting`): the parts add up.
    accounting: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        wrong = (self.problems, self.without_turn, self.overdue, self.failed)
        unaccounted = self.accounting.get("unaccounted", 0)
        return not any(wrong) and not self.abandoned_turns and not unaccounted


def traces_audit(*, since: datetime | None = None, progress: Progress = None) -> TraceAudit:
    """Every exported trace checked in MLflow (present, complete, right ids and metadata).

    Raises: tracing.TrackingUnavailable.
    """
    audit = TraceAudit()
    exports = TraceExport.objects.all()
    turns = Turn.objects.all()
    if since is not None:
        exports = exports.filter(created_at__gte=since)
        turns = turns.filter(created_at__gte=since)
    overdue_before = timezone.now() - timedelta(seconds=60)
    pending = exports.filter(state=TraceExport.State.PENDING)
    audit.pending = pending.count()
    # A sampled-out trace asked for later is due from when it was asked for.
    audit.overdue = list(
        pending.annotate(due_since=Coalesce("requested_at", "created_at"))
        .filter(due_since__lt=overdue_before)
        .values_list("trace_id", flat=True)
    )
    audit.sampled_out = exports.filter(state=TraceExport.State.SAMPLED_OUT).count()
    audit.accounting = selectors.trace_accounting(since=since)
    audit.failed = list(
        exports.filter(state=TraceExport.State.FAILED).values_list("trace_id", flat=True)
    )
    abandoned_before = timezone.now() - timedelta(seconds=settings.TURN_ABANDONED_AFTER_S)
    audit.abandoned_turns = list(
        turns.filter(status=Turn.Status.PENDING, started_at__lt=abandoned_before).values_list(
            "id", flat=True
        )
    )

    exported = exports.filter(state=TraceExport.State.EXPORTED).order_by("id")
    total = exported.count()
    rows = exported.values_list("trace_id", "payload", "written_late").iterator(chunk_size=BATCH)
    batch: dict[str, dict] = {}
    for trace_id, payload, written_late in rows:
        if written_late:  # its trace carries why it was written late, as delivery tagged it
            tags = {**payload["tags"], tracing.WRITTEN_LATE_TAG: written_late}
            payload = {**payload, "tags": tags}
        batch[trace_id] = payload
        if len(batch) == BATCH:
            _check(batch, audit, total, progress)
            batch = {}
    if batch:
        _check(batch, audit, total, progress)

    since_ms = int(since.timestamp() * 1000) if since else None
    in_mlflow = tracing.experiment_trace_ids(since_ms=since_ms)
    audit.without_turn = _unknown(in_mlflow)
    return audit


def _unknown(trace_ids: list[str]) -> list[str]:
    """Those of these trace ids that no trace row or turn names, in their order.

    Looked up by id, a batch at a time (both columns are indexed), so an audit of the last day
    reads the last day's rows, not every trace id the database ever stored.
    """
    unknown = []
    for start in range(0, len(trace_ids), BATCH):
        chunk = trace_ids[start : start + BATCH]
        known = set(
            TraceExport.objects.filter(trace_id__in=chunk).values_list("trace_id", flat=True)
        )
        known |= set(Turn.objects.filter(trace_id__in=chunk).values_list("trace_id", flat=True))
        unknown += [t for t in chunk if t not in known]
    return unknown


def _check(batch: dict[str, dict], audit: TraceAudit, total: int, progress: Progress) -> None:
    found = tracing.trace_problems(list(batch), batch)
    audit.problems.update({t: problem for t, problem in found.items() if problem})
    audit.checked += len(batch)
    if progress:
        progress("traces", audit.checked, total)


def traces_repair(audit: TraceAudit, *, progress: Progress = None) -> int:
    """Write again, from the database, every trace the audit found wrong, missing or stuck.

    A half-written or wrong trace is deleted first, so the rewrite leaves no stale spans or keys,
    unless it joined a caller's trace: deleting it would take the caller's spans too, so it is
    only written again (spans are upserts). Traces without a turn are reported, never deleted:
    they may be someone's evidence.
    Returns how many traces were written. Raises: tracing.TrackingUnavailable.
    """
    to_write = [*audit.problems, *audit.overdue, *audit.failed]
    rows = TraceExport.objects.filter(trace_id__in=list(audit.problems)).only("trace_id", "payload")
    joined = {row.trace_id for row in rows if row.payload["spans"][0]["parent_id"] is not None}
    tracing.delete_traces(
        [t for t, p in audit.problems.items() if p != "missing" and t not in joined]
    )
    written = 0
    for start in range(0, len(to_write), BATCH):
        chunk = to_write[start : start + BATCH]
        rows = list(TraceExport.objects.filter(trace_id__in=chunk))
        errors = tracing.write_traces(selectors.trace_payloads(rows))
        done = [row.pk for row in rows if row.trace_id not in errors]
        now = timezone.now()
        TraceExport.objects.filter(pk__in=done).update(
            state=TraceExport.State.EXPORTED,
            exported_at=now,
            repaired_at=now,
            last_error="",
            leased_until=None,
            lease_owner="",
        )
        written += len(done)
        if progress:
            progress("repaired", written, len(to_write))
    return written
