"""Writes: storing feedback (the request path, database only) and delivering it to MLflow.

The request path never calls MLflow. The delivery worker (`manage.py deliver_feedback`) makes each
trace's assessments match the Feedback rows, retrying with backoff while the trace is still in an
export queue or the tracking server is down; what cannot be delivered is marked failed with the
reason, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from chat import tracing
from chat.exceptions import TurnNotRateable
from chat.models import Turn
from feedback import selectors
from feedback.models import Feedback

logger = logging.getLogger(__name__)

LEASE_S = 120  # a claimed row is left alone this long by other deliverers
UNSET = object()


def feedback_submit(
    *,
    user: AbstractBaseUser,
    turn: Turn,
    is_correct: bool | None = None,
    rating: int | None = None,
    comment: str = "",
    expected_response: str | None = UNSET,
) -> tuple[Feedback, bool]:
    """Store or change `user`'s feedback on `turn`; returns (feedback, created).

    `expected_response` left unset keeps the stored one (staff labels use this).
    Raises: TurnNotRateable.
    """
    if turn.status != Turn.Status.COMPLETED or not turn.trace_id:
        raise TurnNotRateable(
            "This turn has no answer with a trace to rate (it failed, is still running, "
            "or ran while tracing was off)."
        )
    fields = {"is_correct": is_correct, "rating": rating, "comment": comment}
    if expected_response is not UNSET:
        fields["expected_response"] = expected_response or ""
    with transaction.atomic():
        feedback, created = Feedback.objects.select_for_update().get_or_create(
            user=user, turn=turn, defaults={**fields, "next_attempt_at": timezone.now()}
        )
        if not created:
            for name, value in fields.items():
                setattr(feedback, name, value)
            feedback.withdrawn = False
            _mark_changed(feedback)
            feedback.save()
    return feedback, created


def feedback_withdraw(*, feedback: Feedback) -> None:
    """Withdraw feedback: the row stays (so MLflow can be told), its assessments are removed."""
    with transaction.atomic():
        feedback = Feedback.objects.select_for_update().get(pk=feedback.pk)
        feedback.withdrawn = True
        _mark_changed(feedback)
        feedback.save()


def feedback_retry(*, feedback: Feedback) -> None:
    """Queue failed (or pending) feedback for delivery now, with a fresh attempt budget."""
    Feedback.objects.filter(pk=feedback.pk).exclude(
        delivery_state=Feedback.Delivery.DELIVERED
    ).update(
        delivery_state=Feedback.Delivery.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
    )


def _mark_changed(feedback: Feedback) -> None:
    feedback.version += 1
    feedback.delivery_state = Feedback.Delivery.PENDING
    feedback.attempts = 0
    feedback.last_error = ""
    feedback.next_attempt_at = timezone.now()


def feedback_deliver(*, feedback_id: int, now: datetime | None = None) -> str | None:
    """Make MLflow match one due Feedback row; returns its delivery state, None if not claimed."""
    now = now or timezone.now()
    # Claim the row by pushing its next attempt past a lease: other deliverers skip it.
    claimed = (
        selectors.feedback_pending()
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now), pk=feedback_id)
        .update(next_attempt_at=now + timedelta(seconds=LEASE_S))
    )
    if not claimed:
        return None
    feedback = Feedback.objects.select_related("turn").get(pk=feedback_id)
    version = feedback.version
    trace_id = feedback.turn.trace_id
    if not trace_id:
        return _delivery_failed(feedback, "the turn has no MLflow trace", permanent=True)

    wanted_feedback = None
    wanted_expectation = None
    if not feedback.withdrawn:
        if feedback.name is not None:
            wanted_feedback = (feedback.name, feedback.value, feedback.comment)
        wanted_expectation = feedback.expected_response or None
    try:
        feedback_assessment_id, expectation_assessment_id = tracing.sync_assessments(
            trace_id=trace_id,
            key=str(feedback.pk),
            source_id=str(feedback.user_id),
            feedback=wanted_feedback,
            expectation=wanted_expectation,
        )
    except (tracing.TraceNotFound, tracing.TrackingUnavailable) as exc:
        return _delivery_failed(feedback, f"{type(exc).__name__}: {exc}", permanent=False)

    delivered = {
        "feedback_assessment_id": feedback_assessment_id,
        "expectation_assessment_id": expectation_assessment_id,
        "attempts": F("attempts") + 1,
        "last_error": "",
    }
    done = Feedback.objects.filter(pk=feedback.pk, version=version).update(
        **delivered,
        delivery_state=Feedback.Delivery.DELIVERED,
        delivered_version=version,
        delivered_at=timezone.now(),
        next_attempt_at=None,
    )
    if done:
        return Feedback.Delivery.DELIVERED
    # Changed while we delivered: keep the ids we made and deliver the newer version next.
    Feedback.objects.filter(pk=feedback.pk).update(**delivered, next_attempt_at=timezone.now())
    return Feedback.Delivery.PENDING


def _delivery_failed(feedback: Feedback, error: str, *, permanent: bool) -> str:
    attempts = feedback.attempts + 1
    if permanent or attempts >= settings.FEEDBACK_MAX_ATTEMPTS:
        state, next_attempt_at = Feedback.Delivery.FAILED, None
    else:
        delay = min(
            settings.FEEDBACK_RETRY_BASE_S * 2 ** (attempts - 1), settings.FEEDBACK_RETRY_MAX_S
        )
        state, next_attempt_at = (
            Feedback.Delivery.PENDING,
            timezone.now() + timedelta(seconds=delay),
        )
    # A change made meanwhile reset the row to a fresh pending state: leave that alone.
    Feedback.objects.filter(pk=feedback.pk, version=feedback.version).update(
        delivery_state=state,
        attempts=attempts,
        last_error=error[:2000],
        next_attempt_at=next_attempt_at,
    )
    log = logger.error if state == Feedback.Delivery.FAILED else logger.info
    log(
        "feedback delivery %s feedback_id=%s attempt=%s error=%s",
        "failed" if state == Feedback.Delivery.FAILED else "will retry",
        feedback.pk,
        attempts,
        error[:200],
    )
    return state


def feedback_deliver_due(
    *, limit: int = 100, progress: Callable[[int, int, Counter], None] | None = None
) -> Counter:
    """One pass over the feedback due now; returns counts by resulting state."""
    ids = selectors.feedback_due_ids(now=timezone.now(), limit=limit)
    return feedback_deliver_many(feedback_ids=ids, progress=progress)


def feedback_deliver_many(
    *,
    feedback_ids: list[int],
    deadline_s: float | None = None,
    progress: Callable[[int, int, Counter], None] | None = None,
) -> Counter:
    """Try each row once (until `deadline_s`, after which the rest stay queued for the worker)."""
    started = time.monotonic()
    counts: Counter = Counter()
    for done, feedback_id in enumerate(feedback_ids, start=1):
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            counts[Feedback.Delivery.PENDING] += len(feedback_ids) - done + 1
            break
        state = feedback_deliver(feedback_id=feedback_id)
        counts[state or "skipped"] += 1
        if progress:
            progress(done, len(feedback_ids), counts)
    return counts
