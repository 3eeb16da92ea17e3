"""Writes: storing feedback (the request path, database only) and delivering it to MLflow.

The request path never calls MLflow. The delivery worker (`manage.py deliver_feedback`) makes each
trace's assessments match the Feedback rows, retrying with backoff while the trace is still in an
export queue or the tracking server is down; what cannot be delivered is marked failed with the
reason, never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from chat import tracing
from chat.delivery import due, trace_request
from chat.models import TraceExport, Turn
from feedback import selectors
from feedback.exceptions import TurnNotRateable
from feedback.models import Feedback, QueueItem, ReviewClaim

logger = logging.getLogger(__name__)

UNSET = object()
LateReason = TraceExport.LateReason


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
    if turn.status != Turn.Status.COMPLETED:
        raise TurnNotRateable("This turn has no answer to rate (it failed or is still running).")
    fields = {"is_correct": is_correct, "rating": rating, "comment": comment}
    if expected_response is not UNSET:
        fields["expected_response"] = expected_response or ""
    with transaction.atomic():
        feedback, created = Feedback.objects.select_for_update().get_or_create(
            user=user, turn=turn, defaults={**fields, "next_attempt_at": timezone.now()}
        )
        if not created:
            if feedback.withdrawn:
                # A vote after a withdrawal starts afresh: the withdrawn correction stays gone.
                feedback.expected_response = ""
            for name, value in fields.items():
                setattr(feedback, name, value)
            feedback.withdrawn = False
            _mark_changed(feedback)
            feedback.save()
        # A sampled-out turn that someone judges is worth its trace: written now, and the
        # feedback waits for it (selectors.deliverable) like any feedback on a fresh trace.
        trace_request(
            trace_ids=[turn.trace_id],
            reason=LateReason.FEEDBACK if user.pk == turn.user_id else LateReason.LABEL,
        )
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


def feedback_retry_failed() -> int:
    """Queue every failed feedback for delivery again; returns how many."""
    return Feedback.objects.filter(delivery_state=Feedback.Delivery.FAILED).update(
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
    if not selectors.feedback_pending().filter(selectors.deliverable(now), pk=feedback_id).exists():
        return None
    # The claim names only the row's own columns. With the trace join in it, Django writes
    # `WHERE id IN (SELECT ...)`, which PostgreSQL does not re-check against a claim committed
    # meanwhile, so two deliverers could both take the row and log the feedback twice.
    owner = uuid.uuid4().hex
    claimed = (
        selectors.feedback_pending()
        .filter(due(now), pk=feedback_id)
        .update(
            leased_until=now + timedelta(seconds=settings.FEEDBACK_LEASE_S),
            lease_owner=owner,
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        return None
    try:
        return _deliver_claimed(feedback_id, owner=owner, now=now)
    finally:
        Feedback.objects.filter(pk=feedback_id, lease_owner=owner).update(
            leased_until=None, lease_owner=""
        )


def _deliver_claimed(feedback_id: int, *, owner: str, now: datetime) -> str:
    first_attempt = Feedback.objects.filter(pk=feedback_id, first_attempt_at__isnull=True).update(
        first_attempt_at=now
    )
    feedback = Feedback.objects.select_related("turn").get(pk=feedback_id)
    version = feedback.version
    trace_id = feedback.turn.trace_id
    if not trace_id:
        return _delivery_failed(
            feedback,
            "the turn has no MLflow trace (tracing was off or not ready when it ran)",
            owner=owner,
            permanent=True,
        )

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
            known_empty=bool(first_attempt),
        )
    except (tracing.TraceNotFound, tracing.TrackingUnavailable) as exc:
        expired = isinstance(exc, tracing.TraceNotFound) and _past_trace_retention(feedback.turn)
        state = _delivery_failed(
            feedback,
            f"the turn's trace is past TRACE_RETENTION_DAYS ({settings.TRACE_RETENTION_DAYS})"
            if expired
            else f"{type(exc).__name__}: {exc}",
            owner=owner,
            permanent=expired,
            steady=isinstance(exc, tracing.TraceNotFound),
        )
        # Part of the change may have been written before the error.
        return "superseded" if _requeue_if_overtaken(feedback.pk, owner=owner) else state

    delivered = {
        "feedback_assessment_id": feedback_assessment_id,
        "expectation_assessment_id": expectation_assessment_id,
        "last_error": "",
    }
    mine = Feedback.objects.filter(pk=feedback.pk, lease_owner=owner)
    done = mine.filter(version=version).update(
        **delivered,
        delivery_state=Feedback.Delivery.DELIVERED,
        delivered_version=version,
        delivered_at=timezone.now(),
        next_attempt_at=None,
    )
    if done:
        return Feedback.Delivery.DELIVERED
    # Changed while we delivered (so still pending): keep the ids we made; the newer version is
    # delivered as soon as our lease is released, reconciling against what we just wrote.
    if mine.update(**delivered):
        return Feedback.Delivery.PENDING
    if not Feedback.objects.filter(pk=feedback.pk).exists():
        _unwrite_deleted(feedback, trace_id)
        return "deleted"
    # Our lease ran out and another deliverer took the row: its result is the one recorded.
    _requeue_if_overtaken(feedback.pk, owner=owner)
    return "superseded"


def _past_trace_retention(turn: Turn) -> bool:
    """Retention removes traces this old: one missing now is not coming back."""
    days = settings.TRACE_RETENTION_DAYS
    return bool(days) and turn.created_at < timezone.now() - timedelta(days=days)


def _requeue_if_overtaken(feedback_id: int, *, owner: str) -> bool:
    """Queue the row again if our lease ran out and another deliverer took it over.

    That deliverer may have read the trace before our write landed, and recorded as delivered
    what MLflow no longer has; one more delivery, after both, reconciles against what is there.
    A new version makes the takeover's own result (if it is still writing) pending, not
    delivered. The lease is left to its holder.
    """
    overtaken = (
        Feedback.objects.filter(pk=feedback_id)
        .exclude(lease_owner=owner)
        .update(
            version=F("version") + 1,
            delivery_state=Feedback.Delivery.PENDING,
            next_attempt_at=timezone.now(),
        )
    )
    if overtaken:
        logger.warning("feedback delivery outlived its lease feedback_id=%s", feedback_id)
    return bool(overtaken)


def _unwrite_deleted(feedback: Feedback, trace_id: str) -> None:
    """The row was deleted while we delivered it (`feedback_delete`, an erasure): what we just
    wrote must not outlive it."""
    try:
        tracing.erase_assessments(trace_ids=[trace_id], key=str(feedback.pk))
    except tracing.TrackingUnavailable as exc:
        logger.warning(
            "could not remove assessments of deleted feedback feedback_id=%s error=%s",
            feedback.pk,
            str(exc)[:200],
        )


def _delivery_failed(
    feedback: Feedback, error: str, *, owner: str, permanent: bool, steady: bool = False
) -> str:
    """Record a failed attempt: retry later with backoff, or give up with the reason.

    `steady`: the trace is not exported yet, which is normal for a few seconds after a turn;
    those first retries keep the base pace instead of backing off.
    """
    attempts = feedback.attempts  # counted when the row was claimed
    if permanent or attempts >= settings.FEEDBACK_MAX_ATTEMPTS:
        state, next_attempt_at = Feedback.Delivery.FAILED, None
    else:
        if steady and attempts <= settings.FEEDBACK_TRACE_WAIT_ATTEMPTS:
            delay = settings.FEEDBACK_RETRY_BASE_S
        else:
            delay = min(
                settings.FEEDBACK_RETRY_BASE_S * 2 ** (attempts - 1), settings.FEEDBACK_RETRY_MAX_S
            )
        state, next_attempt_at = (
            Feedback.Delivery.PENDING,
            timezone.now() + timedelta(seconds=delay),
        )
    # A change made meanwhile reset the row to a fresh pending state, or another deliverer took
    # it over after our lease ran out: leave that alone.
    Feedback.objects.filter(pk=feedback.pk, version=feedback.version, lease_owner=owner).update(
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


def feedback_request_traces() -> int:
    """Ask for the sampled-out traces that pending feedback waits on; returns how many.

    `feedback_submit` asks for them as it stores the feedback; this catches feedback stored any
    other way, so no feedback waits for ever on a trace nobody writes. (The feedback worker's
    chore, every FEEDBACK_PROBE_INTERVAL_S.)
    """
    waiting = selectors.feedback_pending().values("turn__trace_id")
    return trace_request(trace_ids=waiting, reason=LateReason.FEEDBACK)


def feedback_resume_after_outage() -> int:
    """When the tracking store answers again, deliver what was backing off because it did not.

    Without this, feedback that backed off during a long outage would wait up to
    FEEDBACK_RETRY_MAX_S after the store is back. Returns how many rows were pulled forward.
    """
    now = timezone.now()
    waiting = selectors.feedback_pending().filter(
        last_error__startswith="TrackingUnavailable", next_attempt_at__gt=now
    )
    if not waiting.exists() or not tracing.tracking_reachable():
        return 0
    return waiting.update(next_attempt_at=now)


def feedback_deliver_due(
    *,
    limit: int = 100,
    threads: int = 1,
    progress: Callable[[int, int, Counter], None] | None = None,
) -> Counter:
    """One pass over the feedback due now; returns counts by resulting state."""
    ids = selectors.feedback_due_ids(now=timezone.now(), limit=limit)
    return feedback_deliver_many(feedback_ids=ids, threads=threads, progress=progress)


def feedback_deliver_many(
    *,
    feedback_ids: list[int],
    deadline_s: float | None = None,
    threads: int = 1,
    progress: Callable[[int, int, Counter], None] | None = None,
) -> Counter:
    """Try each row once (until `deadline_s`, after which the rest stay queued for the worker).

    With `threads` > 1 rows are delivered concurrently, each thread on its own DB connection:
    MLflow round trips, not our work, bound the throughput.
    """
    started = time.monotonic()
    counts: Counter = Counter()
    lock = threading.Lock()

    def deliver(feedback_id: int) -> None:
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            state = Feedback.Delivery.PENDING  # left queued for the worker
        else:
            try:
                state = feedback_deliver(feedback_id=feedback_id) or "skipped"
            except Exception:
                # E.g. a locked database: the row keeps its lease and is retried after it.
                logger.exception("feedback delivery crashed feedback_id=%s", feedback_id)
                state = "error"
        with lock:
            counts[state] += 1
            if progress:
                progress(sum(counts.values()), len(feedback_ids), counts)

    if threads <= 1 or len(feedback_ids) <= 1:
        for feedback_id in feedback_ids:
            deliver(feedback_id)
        return counts

    def deliver_in_thread(feedback_id: int) -> None:
        try:
            deliver(feedback_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feedback-delivery") as pool:
        list(pool.map(deliver_in_thread, feedback_ids))
    return counts


def feedback_delete(*, feedback: Feedback) -> int:
    """Delete feedback for good: its assessments (superseded ones too) from MLflow, then the row.

    MLflow first, so a failure leaves the row (and a retry finds the assessments by its id);
    feedback never sent to MLflow needs no call. Returns how many assessments were removed.
    Raises: tracing.TrackingUnavailable (nothing deleted).
    """
    feedback = Feedback.objects.select_related("turn").get(pk=feedback.pk)
    removed = 0
    if feedback.first_attempt_at is not None and feedback.turn.trace_id:
        removed = tracing.erase_assessments(
            trace_ids=[feedback.turn.trace_id], key=str(feedback.pk)
        )
    # A deliverer holding it now sees the row gone and removes what it writes (_unwrite_deleted).
    Feedback.objects.filter(pk=feedback.pk).delete()
    logger.info("feedback deleted feedback_id=%s assessments=%s", feedback.pk, removed)
    return removed


@dataclass(frozen=True)
class EvalExport:
    traces: int
    waiting: int
    records: int


def eval_dataset_export(
    *, name: str, since: datetime | None = None, turn_ids=None, progress=None
) -> EvalExport:
    """Turn production traces with corrected answers into an MLflow evaluation dataset.

    Only corrections already delivered to MLflow are exported (the expectation must be on the
    trace); the others are counted as waiting. Running it again adds no duplicates.
    Raises: tracing.TrackingUnavailable.
    """
    trace_ids, waiting = selectors.corrected_trace_ids(since=since, turn_ids=turn_ids)
    records = tracing.merge_into_eval_dataset(name=name, trace_ids=trace_ids, progress=progress)
    return EvalExport(traces=len(trace_ids), waiting=waiting, records=records)


# --- The review queue --------------------------------------------------------------------------


def review_enqueue(*, turn: Turn, reason: str) -> tuple[QueueItem, bool]:
    """Put `turn` in the review queue with `reason`; a turn already there is never queued twice.

    Returns the item and whether this call created it.
    """
    try:
        with transaction.atomic():
            return QueueItem.objects.create(turn=turn, reason=reason[:200]), True
    except IntegrityError:
        return QueueItem.objects.get(turn=turn), False


def review_claim_next(
    *,
    reviewer: AbstractBaseUser,
    filters: selectors.ReviewFilter,
    skip: Sequence[int] = (),
    now: datetime | None = None,
) -> Turn | None:
    """Hold the next turn of the queue for `reviewer` (nobody else is shown it meanwhile).

    The turn already held by this reviewer comes back first (a reload shows the same item).
    A sampled-out turn's trace is asked for as it is shown, so its trace link works by the time
    the reviewer opens it.
    """
    turn = _review_claim(reviewer=reviewer, filters=filters, skip=skip, now=now)
    if turn is not None:
        trace_request(trace_ids=[turn.trace_id], reason=LateReason.REVIEW)
        QueueItem.objects.filter(turn=turn, state=QueueItem.State.NEW).update(
            state=QueueItem.State.IN_REVIEW
        )
    return turn


def _review_claim(
    *,
    reviewer: AbstractBaseUser,
    filters: selectors.ReviewFilter,
    skip: Sequence[int],
    now: datetime | None,
) -> Turn | None:
    now = now or timezone.now()
    until = now + timedelta(seconds=settings.REVIEW_CLAIM_S)
    queue = selectors.review_queue(filters=filters, reviewer=reviewer, now=now).exclude(
        pk__in=list(skip)
    )
    for turn in queue.filter(review_claim__reviewer=reviewer)[:1]:
        ReviewClaim.objects.filter(turn=turn, reviewer=reviewer).update(expires_at=until)
        return turn
    if selectors.gold_due(reviewer=reviewer):
        # Unannounced, whatever the filters: a turn whose right label is known.
        gold = selectors.gold_queue(reviewer=reviewer, now=now).exclude(pk__in=list(skip))
        if (turn := _claim_first(gold, reviewer=reviewer, now=now, until=until)) is not None:
            return turn
    return _claim_first(queue, reviewer=reviewer, now=now, until=until)


def _claim_first(queue, *, reviewer: AbstractBaseUser, now: datetime, until: datetime):
    for turn in queue[:20]:
        # Two reviewers racing for one turn: the claim row's primary key lets one through.
        with transaction.atomic():
            taken = ReviewClaim.objects.filter(turn=turn, expires_at__lte=now).update(
                reviewer=reviewer, expires_at=until
            )
        if taken:
            return turn
        try:
            with transaction.atomic():
                ReviewClaim.objects.create(turn=turn, reviewer=reviewer, expires_at=until)
        except IntegrityError:
            continue
        return turn
    return None


def review_label(
    *,
    reviewer: AbstractBaseUser,
    turn: Turn,
    is_correct: bool,
    expected_response: str = "",
) -> Feedback:
    """Label a turn from the review queue (MLflow gets it through the delivery worker).

    Raises: TurnNotRateable.
    """
    earlier = selectors.feedback_of(user=reviewer, turn=turn)
    feedback, _ = feedback_submit(
        user=reviewer,
        turn=turn,
        is_correct=is_correct,
        comment=earlier.comment if earlier else "",
        # An empty box keeps a correction this reviewer set before rather than erasing it.
        expected_response=expected_response or UNSET,
    )
    review_item_decide(reviewer=reviewer, turn=turn, feedback=feedback)
    review_release(reviewer=reviewer, turn=turn)
    return feedback


def review_item_decide(*, reviewer: AbstractBaseUser, turn: Turn, feedback: Feedback) -> None:
    """Move the turn's queue item (if it has one) on after a label.

    Correct: "not a problem". Incorrect with a correction: "corrected". Incorrect without one:
    still in review, since a correction is what the dataset needs.
    """
    if feedback.is_correct:
        state = QueueItem.State.NOT_A_PROBLEM
    elif feedback.expected_response:
        state = QueueItem.State.CORRECTED
    else:
        QueueItem.objects.filter(turn=turn, state=QueueItem.State.NEW).update(
            state=QueueItem.State.IN_REVIEW
        )
        return
    QueueItem.objects.filter(turn=turn).update(
        state=state, decided_at=timezone.now(), decided_by=reviewer
    )


def review_release(*, reviewer: AbstractBaseUser, turn: Turn | None = None) -> None:
    """Let go of a held turn (labelled, or skipped), or of all `reviewer` holds, for others."""
    held = ReviewClaim.objects.filter(reviewer=reviewer)
    (held.filter(turn=turn) if turn is not None else held).delete()
