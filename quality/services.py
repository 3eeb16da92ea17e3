"""Writes: acting on the turns rules pick (as votes arrive, or on past turns) and alert states.

As votes arrive: a thread of the feedback worker runs `quality_worker_pass` every
QUALITY_MATCH_INTERVAL_S (0.5 s; never on a request). It reads feedback changed since its
cursor (and turns finished since, for rules on failed turns), runs each enabled rule's filter
over just those turns, and acts on the ones the rule's sampling picks. A `RuleMatch` row, unique
per rule and turn, is written in the same transaction as the actions, so a turn is acted on once
per rule however often it is seen; `review_enqueue` keeps a turn in the queue once whichever
rules pick it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from chat.models import Turn
from feedback.models import Feedback
from feedback.services import review_enqueue
from quality import selectors, webhooks
from quality.models import Alert, AlertEvent, MatchCursor, Rule, RuleMatch

logger = logging.getLogger(__name__)

CURSOR = "worker"
PAGE = 1000


def rule_act(*, rule: Rule, turn: Turn, backfill: bool = False) -> RuleMatch | None:
    """Do `rule`'s actions on `turn` and record the match; None if the rule had already acted.

    One transaction: the match row is written last, and if it exists already (another worker, a
    backfill running beside the worker) everything this call did is rolled back, so the queue,
    the dataset and the webhooks see each turn once per rule.
    """
    try:
        with transaction.atomic():
            queued = staged = delivery = None
            if rule.enqueue:
                _, queued = review_enqueue(turn=turn, reason=rule.name)
            if rule.dataset_name:
                staged = _dataset_stage(rule=rule, turn=turn)
            if rule.webhook_url:
                delivery = webhooks.webhook_enqueue(
                    url=rule.webhook_url, payload=_match_payload(rule=rule, turn=turn), rule=rule
                )
            return RuleMatch.objects.create(
                rule=rule,
                turn=turn,
                backfill=backfill,
                queued=queued,
                staged=staged,
                delivery=delivery,
            )
    except IntegrityError:
        return None


def _dataset_stage(*, rule: Rule, turn: Turn) -> bool | None:
    """Hand the turn to the evaluation datasets (QUALITY_DATASET_STAGE); None when there are none.

    The datasets live in another app; naming its function in a setting keeps this app free of it.
    """
    path = settings.QUALITY_DATASET_STAGE
    if not path:
        logger.info(
            "rule wants a dataset but QUALITY_DATASET_STAGE is empty rule=%s dataset=%s turn_id=%s",
            rule.name,
            rule.dataset_name,
            turn.pk,
        )
        return None
    try:
        stage = import_string(path)
    except ImportError:
        logger.warning("QUALITY_DATASET_STAGE=%s cannot be imported; turn_id=%s", path, turn.pk)
        return None
    try:
        with transaction.atomic():
            return bool(stage(dataset_name=rule.dataset_name, turn=turn, reason=rule.name))
    except Exception:
        logger.exception(
            "dataset stage failed rule=%s dataset=%s turn_id=%s",
            rule.name,
            rule.dataset_name,
            turn.pk,
        )
        return False


def _match_payload(*, rule: Rule, turn: Turn) -> dict:
    """What a receiver learns: ids, the deployment, and the owner's vote (no conversation text)."""
    own = Feedback.objects.filter(turn=turn, user_id=turn.user_id, withdrawn=False).first()
    return {
        "event": "rule.matched",
        "rule": rule.name,
        "matched_at": timezone.now().isoformat(),
        "turn": {
            "id": turn.pk,
            "session_id": str(turn.session_id),
            "client_request_id": turn.client_request_id,
            "trace_id": turn.trace_id,
            "status": turn.status,
            "model": turn.model,
            "app_version": turn.app_version,
            "environment": turn.environment,
            "created_at": turn.created_at.isoformat(),
            "admin_path": reverse("admin:chat_turn_change", args=[turn.pk]),
        },
        "feedback": None
        if own is None
        else {
            "is_correct": own.is_correct,
            "rating": own.rating,
            "has_comment": bool(own.comment),
            "has_correction": bool(own.expected_response),
        },
        "queued": rule.enqueue,
        "dataset": rule.dataset_name or None,
    }


def _act_on(*, rule: Rule, candidates: list[int], backfill: bool = False) -> Counter:
    counts: Counter = Counter()
    for start in range(0, len(candidates), PAGE):
        page = candidates[start : start + PAGE]
        turns = selectors.rule_unmatched_turns(rule=rule).filter(pk__in=page).order_by("id")
        for turn in turns:
            if not selectors.rule_samples(rule_id=rule.pk, turn_id=turn.pk, rate=rule.sample_rate):
                counts["sampled_out"] += 1
                continue
            counts["matched" if rule_act(rule=rule, turn=turn, backfill=backfill) else "seen"] += 1
    return counts


def rules_match_new(*, now: datetime | None = None) -> Counter:
    """Match what changed since the cursor against every enabled rule; counts by outcome.

    Feedback is read from a little before the cursor (QUALITY_MATCH_LAG_S): a vote saved just
    before the last pass but committed after it is still seen. Seeing a turn again acts on
    nothing (its RuleMatch exists), so the overlap only costs a re-read.
    """
    now = now or timezone.now()
    cursor = MatchCursor.objects.filter(name=CURSOR).first()
    if cursor is None:
        # The worker's first pass: from now on. Older turns are for "apply to past turns".
        last_turn = Turn.objects.aggregate(last=Max("id"))["last"] or 0
        MatchCursor.objects.get_or_create(
            name=CURSOR, defaults={"position": now, "turn_id": last_turn}
        )
        return Counter()
    rules = selectors.rules_enabled()
    on_votes = [rule for rule in rules if rule.uses_feedback]
    on_turns = [rule for rule in rules if not rule.uses_feedback]
    counts: Counter = Counter()

    position = cursor.position or now
    if on_votes:
        changed, position = _feedback_changed_since(position - _lag())
        position = max(position, cursor.position) if cursor.position else position
        for rule in on_votes:
            counts.update(_act_on(rule=rule, candidates=changed))
    else:
        position = now

    turn_id = cursor.turn_id
    if on_turns:
        finished, turn_id = _turns_finished_since(cursor.turn_id, now=now)
        for rule in on_turns:
            counts.update(_act_on(rule=rule, candidates=finished))
    else:
        turn_id = Turn.objects.aggregate(last=Max("id"))["last"] or turn_id

    MatchCursor.objects.filter(name=CURSOR).update(position=position, turn_id=turn_id)
    return counts


def _lag() -> timedelta:
    return timedelta(seconds=settings.QUALITY_MATCH_LAG_S)


def _feedback_changed_since(since: datetime) -> tuple[list[int], datetime]:
    """Turn ids with feedback changed after `since` (keyset pages), and the newest change seen."""
    turn_ids: list[int] = []
    newest = since
    after = (since, 0)
    while True:
        rows = list(
            Feedback.objects.filter(updated_at__gte=after[0])
            .exclude(updated_at=after[0], id__lte=after[1])
            .order_by("updated_at", "id")
            .values_list("updated_at", "id", "turn_id")[:PAGE]
        )
        turn_ids.extend(turn_id for _, _, turn_id in rows)
        if rows:
            newest = max(newest, rows[-1][0])
            after = (rows[-1][0], rows[-1][1])
        if len(rows) < PAGE:
            return sorted(set(turn_ids)), newest


def _turns_finished_since(after_id: int, *, now: datetime) -> tuple[list[int], int]:
    """Ids of turns after `after_id` that have finished, and how far the cursor may move.

    The cursor stops before the oldest turn still running (it may yet fail), unless that turn is
    older than TURN_ABANDONED_AFTER_S (the trace worker closes such turns; they are not waited on).
    """
    horizon = now - timedelta(seconds=settings.TURN_ABANDONED_AFTER_S)
    rows = list(
        Turn.objects.filter(id__gt=after_id)
        .order_by("id")
        .values_list("id", "status", "created_at")[: PAGE * 5]
    )
    finished, cursor, blocked = [], after_id, False
    for turn_id, status, created_at in rows:
        running = status == Turn.Status.PENDING and created_at > horizon
        if running:
            blocked = True
            continue
        finished.append(turn_id)
        if not blocked:
            cursor = turn_id
    return finished, cursor


def rule_apply(
    *,
    rule: Rule,
    since: datetime | None = None,
    batch: int = 500,
    deadline_s: float | None = None,
    progress: Callable[[int, Counter], None] | None = None,
) -> tuple[Counter, bool]:
    """Apply `rule` to past turns (created since `since`), in batches by id; returns the counts
    and whether it got through them all (False: `deadline_s` ran out; run it again to go on).

    Safe to repeat: turns it acted on before are skipped, and the sampling picks the same turns.
    """
    started = time.monotonic()
    turns = selectors.rule_unmatched_turns(rule=rule)
    if since is not None:
        turns = turns.filter(created_at__gte=since)
    counts: Counter = Counter()
    after = 0
    while True:
        ids = list(turns.filter(id__gt=after).order_by("id").values_list("id", flat=True)[:batch])
        if not ids:
            return counts, True
        counts.update(_act_on(rule=rule, candidates=ids, backfill=True))
        after = ids[-1]
        if progress:
            progress(after, counts)
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            return counts, False


# --- Alerts -----------------------------------------------------------------------------------


def alert_evaluate(*, alert: Alert, now: datetime | None = None) -> AlertEvent | None:
    """Compute `alert`'s figure and fire or resolve it; returns the event when its state changed.

    Too few samples in the window leave the state as it is (a quiet night is not a recovery).
    """
    now = now or timezone.now()
    figure = selectors.alert_figure(
        metric=alert.metric, window_minutes=alert.window_minutes, model=alert.model, now=now
    )
    alert.last_value, alert.last_samples, alert.last_evaluated_at = (
        figure.value,
        figure.samples,
        now,
    )
    event = None
    if figure.value is not None and figure.samples >= alert.min_samples:
        wanted = Alert.State.FIRING if figure.value > alert.threshold else Alert.State.RESOLVED
        if wanted != alert.state:
            with transaction.atomic():
                alert.state, alert.changed_at = wanted, now
                event = _alert_event(alert=alert, value=figure.value, samples=figure.samples)
    alert.save(
        update_fields=["last_value", "last_samples", "last_evaluated_at", "state", "changed_at"]
    )
    return event


def _alert_event(*, alert: Alert, value: float, samples: int) -> AlertEvent:
    shown = f"{value:.0f} ms" if alert.metric == Alert.Metric.P95_LATENCY_MS else f"{value:.1%}"
    limit = (
        f"{alert.threshold:.0f} ms"
        if alert.metric == Alert.Metric.P95_LATENCY_MS
        else f"{alert.threshold:.1%}"
    )
    scope = f" for model {alert.model}" if alert.model else ""
    if alert.state == Alert.State.FIRING:
        text = (
            f":rotating_light: FIRING {alert.name}: {alert.get_metric_display()}{scope} is "
            f"{shown} over the last {alert.window_minutes} min (threshold {limit}, "
            f"{samples} samples)"
        )
    else:
        text = (
            f":white_check_mark: RESOLVED {alert.name}: {alert.get_metric_display()}{scope} is "
            f"{shown} over the last {alert.window_minutes} min (threshold {limit}, "
            f"{samples} samples)"
        )
    delivery = None
    if alert.webhook_url:
        delivery = webhooks.webhook_enqueue(
            url=alert.webhook_url, payload={"text": text}, alert=alert
        )
    logger.warning("alert %s name=%s value=%s samples=%s", alert.state, alert.name, value, samples)
    return AlertEvent.objects.create(
        alert=alert,
        state=alert.state,
        value=value,
        samples=samples,
        message=text,
        delivery=delivery,
    )


def alerts_evaluate(*, now: datetime | None = None) -> list[AlertEvent]:
    """Evaluate every enabled alert; returns the state changes."""
    events = []
    for alert in Alert.objects.filter(enabled=True):
        if event := alert_evaluate(alert=alert, now=now):
            events.append(event)
    return events


# --- In the feedback worker --------------------------------------------------------------------

_alerts_due_at = 0.0
_loop: threading.Thread | None = None
_loop_stop = threading.Event()


def quality_worker_pass() -> list[str]:
    """One pass: match new votes, start sending due webhooks (in the background), and evaluate
    alerts when QUALITY_ALERT_INTERVAL_S has passed. Returns lines for the log."""
    global _alerts_due_at
    lines = []
    counts = rules_match_new()
    if counts["matched"]:
        lines.append(f"rules: {counts['matched']} turn(s) matched")
    webhooks.webhooks_kick()
    if time.monotonic() >= _alerts_due_at:
        _alerts_due_at = time.monotonic() + settings.QUALITY_ALERT_INTERVAL_S
        for event in alerts_evaluate():
            lines.append(f"alert {event.alert.name} {event.state}: {event.value:.4g}")
    return lines


def quality_worker_ensure() -> list[str]:
    """The feedback worker's chore (FEEDBACK_WORKER_CHORES: at start, then every
    FEEDBACK_PROBE_INTERVAL_S): keep a thread running `quality_worker_pass` every
    QUALITY_MATCH_INTERVAL_S beside delivery.

    A thread of its own because delivery can be slow (a tracking server that times out holds a
    batch for seconds or minutes) and a thumbs-down must reach the queue within seconds anyway.
    """
    global _loop
    if _loop is not None and _loop.is_alive():
        return []
    _loop_stop.clear()
    _loop = threading.Thread(target=_run_loop, name="quality-rules", daemon=True)
    _loop.start()
    return [f"quality rules and alerts: a pass every {settings.QUALITY_MATCH_INTERVAL_S}s"]


def quality_worker_stop(timeout: float = 10.0) -> None:
    """Stop the thread (tests; the worker's process simply exits)."""
    _loop_stop.set()
    if _loop is not None:
        _loop.join(timeout)


def _run_loop() -> None:
    while not _loop_stop.is_set():
        try:
            close_old_connections()
            for line in quality_worker_pass():
                logger.info(line)
        except Exception:
            logger.exception("quality pass failed; retrying shortly")
            _loop_stop.wait(5)
        finally:
            connection.close()
        _loop_stop.wait(settings.QUALITY_MATCH_INTERVAL_S)
