"""Reads: which turns a rule selects, and the figures alerts (and /metrics) watch."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from chat.models import Turn
from feedback.models import Feedback
from quality.models import Alert, Rule, RuleMatch

NEGATIVE = Q(is_correct=False) | Q(rating__lte=2)
JUDGED = Q(is_correct__isnull=False) | Q(rating__isnull=False)


def rule_turns(*, rule: Rule) -> QuerySet[Turn]:
    """Every turn `rule`'s filter selects (sampling not applied), matched before or not."""
    status = Turn.Status.FAILED if rule.failed_turns else Turn.Status.COMPLETED
    turns = Turn.objects.filter(status=status)
    own = Feedback.objects.filter(turn=OuterRef("pk"), user=OuterRef("user_id"), withdrawn=False)
    vote = Q()
    if rule.thumbs_down:
        vote |= Q(is_correct=False)
    if rule.max_rating:
        vote |= Q(rating__lte=rule.max_rating)
    if vote:
        turns = turns.filter(Exists(own.filter(vote)))
    if rule.has_comment:
        turns = turns.filter(Exists(own.exclude(comment="")))
    if rule.has_correction:
        anyones = Feedback.objects.filter(turn=OuterRef("pk"), withdrawn=False)
        turns = turns.filter(Exists(anyones.exclude(expected_response="")))
    for field in ("model", "app_version", "environment"):
        if value := getattr(rule, field):
            turns = turns.filter(**{field: value})
    return turns


def rule_unmatched_turns(*, rule: Rule) -> QuerySet[Turn]:
    """`rule_turns` less those the rule already acted on."""
    done = RuleMatch.objects.filter(rule=rule, turn=OuterRef("pk"))
    return rule_turns(rule=rule).filter(~Exists(done))


def rule_samples(*, rule_id: int, turn_id: int, rate: float) -> bool:
    """Whether the rule's sampling picks this turn: a hash of both ids, so the same every time."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"rule:{rule_id}:turn:{turn_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def rules_enabled() -> list[Rule]:
    return list(Rule.objects.filter(enabled=True).order_by("id"))


# --- Alert figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    value: float | None  # None: nothing in the window to compute it from
    samples: int


def alert_figure(
    *, metric: str, window_minutes: int, model: str = "", now: datetime | None = None
) -> Figure:
    """One alert's figure over the last `window_minutes` (a quick ORM aggregate or two).

    - negative share: owners' votes changed in the window that are thumbs down or rated 1-2,
      among their votes (staff labels are judgements of the answer, not users' votes);
    - error rate: failed turns among the turns started in the window that finished (answered or
      failed; a cancelled one is the client's doing, not ours);
    - p95 latency: of the answered turns started in the window, nearest-rank.
    """
    now = now or timezone.now()
    since = now - timedelta(minutes=window_minutes)
    if metric == Alert.Metric.NEGATIVE_SHARE:
        votes = Feedback.objects.filter(
            JUDGED, updated_at__gte=since, withdrawn=False, user_id=F("turn__user_id")
        )
        if model:
            votes = votes.filter(turn__model=model)
        counts = votes.aggregate(n=Count("id"), bad=Count("id", filter=NEGATIVE))
        return Figure(counts["bad"] / counts["n"] if counts["n"] else None, counts["n"])
    turns = Turn.objects.filter(created_at__gte=since)
    if model:
        turns = turns.filter(model=model)
    if metric == Alert.Metric.ERROR_RATE:
        counts = turns.filter(status__in=[Turn.Status.COMPLETED, Turn.Status.FAILED]).aggregate(
            n=Count("id"), failed=Count("id", filter=Q(status=Turn.Status.FAILED))
        )
        return Figure(counts["failed"] / counts["n"] if counts["n"] else None, counts["n"])
    if metric == Alert.Metric.P95_LATENCY_MS:
        answered = turns.filter(status=Turn.Status.COMPLETED, latency_ms__isnull=False)
        n = answered.count()
        if not n:
            return Figure(None, 0)
        rank = math.ceil(0.95 * n) - 1
        value = answered.order_by("latency_ms").values_list("latency_ms", flat=True)[rank]
        return Figure(float(value), n)
    raise ValueError(f"unknown alert metric {metric!r}")
