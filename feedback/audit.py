"""Checking that every delivered feedback is on its trace in MLflow, with the same value, and
nothing else of it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from chat import tracing
from feedback import services
from feedback.models import Feedback

BATCH = 100
Progress = Callable[[str, int, int], None] | None


@dataclass
class FeedbackAudit:
    checked: int = 0
    problems: dict[int, str] = field(default_factory=dict)  # feedback id -> what is wrong
    pending: int = 0
    overdue: list[int] = field(default_factory=list)  # pending for more than five minutes
    failed: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.overdue or self.failed)


def feedback_audit(*, since: datetime | None = None, progress: Progress = None) -> FeedbackAudit:
    """Delivered feedback compared with its trace's assessments. Raises: TrackingUnavailable."""
    audit = FeedbackAudit()
    rows = Feedback.objects.select_related("turn")
    if since is not None:
        rows = rows.filter(updated_at__gte=since)
    pending = rows.filter(delivery_state=Feedback.Delivery.PENDING)
    audit.pending = pending.count()
    overdue_before = timezone.now() - timedelta(minutes=5)
    audit.overdue = list(pending.filter(updated_at__lt=overdue_before).values_list("pk", flat=True))
    audit.failed = list(
        rows.filter(delivery_state=Feedback.Delivery.FAILED).values_list("pk", flat=True)
    )
    delivered = list(rows.filter(delivery_state=Feedback.Delivery.DELIVERED).order_by("pk"))
    for start in range(0, len(delivered), BATCH):
        chunk = delivered[start : start + BATCH]
        stored = tracing.assessments_by_trace(sorted({f.turn.trace_id for f in chunk}))
        for feedback in chunk:
            problem = _compare(feedback, stored.get(feedback.turn.trace_id))
            if problem:
                audit.problems[feedback.pk] = problem
        audit.checked += len(chunk)
        if progress:
            progress("feedback", audit.checked, len(delivered))
    return audit


def _compare(feedback: Feedback, stored: list[tracing.StoredAssessment] | None) -> str:
    """What differs ("" for nothing): each assessment the row holds must be on the trace once,
    with its value, and no other valid assessment of the row's (any name) may be."""
    if stored is None:
        return "its trace is not in MLflow"
    ours = [a for a in stored if a.key == str(feedback.pk)]
    held = _held(feedback)
    problems = []
    for name, value in held.items():
        found = [a for a in ours if a.name == name]
        label = "expected response" if name == tracing.EXPECTATION_NAME else name
        if not found:
            problems.append(f"{label} missing")
        elif len(found) > 1:
            problems.append(f"{label} there {len(found)} times")
        elif _same(found[0].value, value):
            continue
        elif name == tracing.EXPECTATION_NAME:  # the user's own text: not shown
            problems.append("expected response differs")
        else:
            problems.append(f"MLflow has {found[0].value!r}, the database {value!r}")
    for stray in (a for a in ours if a.name not in held):
        what = "an expected response" if stray.is_expectation else f"{stray.name} {stray.value!r}"
        why = "withdrawn" if feedback.withdrawn else "the row does not hold it"
        problems.append(f"{what} on the trace, {why}")
    return "; ".join(problems)


def _held(feedback: Feedback) -> dict[str, bool | int | str]:
    """The assessments the row asks of its trace, name -> value."""
    if feedback.withdrawn:
        return {}
    held = {}
    if feedback.name is not None:
        held[str(feedback.name)] = feedback.value
    if feedback.expected_response:
        held[tracing.EXPECTATION_NAME] = feedback.expected_response
    return held


def _same(stored, held) -> bool:
    # `True == 1`, yet a thumbs-up is not a rating of 1; a rating comes back over REST as 4.0.
    return isinstance(stored, bool) == isinstance(held, bool) and stored == held


def feedback_repair(audit: FeedbackAudit) -> int:
    """Deliver again every feedback the audit found wrong or stuck; returns how many landed.

    A delivery makes the trace hold exactly what the row does, so it also removes what the row
    does not hold.
    """
    ids = [*audit.problems, *audit.overdue, *audit.failed]
    Feedback.objects.filter(pk__in=ids).update(
        delivery_state=Feedback.Delivery.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        leased_until=None,
        lease_owner="",
    )
    counts = services.feedback_deliver_many(feedback_ids=ids)
    return counts[Feedback.Delivery.DELIVERED]
