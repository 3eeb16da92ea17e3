"""Checking that every delivered feedback is on its trace in MLflow, with the same value."""

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
    if stored is None:
        return "its trace is not in MLflow"
    ours = [a for a in stored if a.key == str(feedback.pk)]
    votes = [a for a in ours if not a.is_expectation]
    expectations = [a for a in ours if a.is_expectation]
    want_vote = None if feedback.withdrawn else feedback.name
    if want_vote is None and votes:
        return "a withdrawn vote is still on the trace"
    if want_vote is not None:
        if len(votes) != 1 or votes[0].name != want_vote:
            return f"assessment {want_vote} missing or doubled ({len(votes)} found)"
        if votes[0].value != feedback.value:
            return f"MLflow has {votes[0].value!r}, the database {feedback.value!r}"
    want_expectation = "" if feedback.withdrawn else feedback.expected_response
    have = expectations[0].value if len(expectations) == 1 else None
    if (want_expectation or None) != have or len(expectations) > 1:
        return "expected response differs"
    return ""


def feedback_repair(audit: FeedbackAudit) -> int:
    """Deliver again every feedback the audit found wrong or stuck; returns how many landed."""
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
