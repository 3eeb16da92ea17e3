"""Do reviewers agree? Cohen's kappa and % agreement from staff labels on the same turns.

A staff label is a live Feedback row with `is_correct` set by someone other than the turn's
owner (the review queue's and the admin actions' labels). Three comparisons:
- per reviewer: their labels against every other reviewer's on the turns both labelled (pooled
  pairs), and against gold items (turns whose right label is known, `GoldItem`);
- per label: how often, when one reviewer gives it, the other gives it too (specific agreement),
  and kappa of that label against the rest;
- the turns two reviewers disagree on: waiting for a third reviewer (the review queue offers them
  to someone else), or settled by the majority once three have labelled.

Cohen's kappa is (p_o - p_e) / (1 - p_e): observed agreement corrected for the agreement the two
raters' own label shares would give by chance. None where it is undefined (both raters always
gave one and the same label: p_e = 1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations

from django.contrib.auth import get_user_model
from django.db.models import F

from feedback.models import Feedback, GoldItem

LABELS = {True: "correct", False: "wrong"}


@dataclass(frozen=True)
class Agreement:
    """Paired labels: how many pairs, how many agreed, and kappa."""

    pairs: int
    agreed: int
    kappa: float | None

    @property
    def percent(self) -> float | None:
        return 100.0 * self.agreed / self.pairs if self.pairs else None


def cohen_kappa(pairs: list[tuple]) -> Agreement:
    """Agreement of the first and second rater over `pairs` of labels."""
    n = len(pairs)
    if not n:
        return Agreement(0, 0, None)
    agreed = sum(1 for a, b in pairs if a == b)
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[label] * second[label] for label in first | second) / (n * n)
    if expected >= 1.0:
        return Agreement(n, agreed, None)
    return Agreement(n, agreed, (agreed / n - expected) / (1.0 - expected))


def staff_labels() -> dict[int, dict[int, bool]]:
    """{turn id: {reviewer id: is_correct}} for every turn staff labelled."""
    rows = (
        Feedback.objects.filter(withdrawn=False, is_correct__isnull=False)
        .exclude(user_id=F("turn__user_id"))
        .values_list("turn_id", "user_id", "is_correct")
    )
    labels: dict[int, dict[int, bool]] = defaultdict(dict)
    for turn_id, user_id, is_correct in rows:
        labels[turn_id][user_id] = is_correct
    return dict(labels)


def settled_label(by_reviewer: dict[int, bool]) -> bool | None:
    """The turn's label once reviewers settled it: all agree, or a strict majority of >= 3."""
    counts = Counter(by_reviewer.values())
    if len(counts) == 1:
        return next(iter(counts))
    if len(by_reviewer) >= 3:
        (label, top), (_, second) = counts.most_common(2)
        if top > second:
            return label
    return None


@dataclass(frozen=True)
class ReviewerRow:
    reviewer: object
    labels: int
    with_others: Agreement
    with_gold: Agreement


@dataclass(frozen=True)
class LabelRow:
    label: str
    given: int
    specific_percent: float | None
    kappa: float | None


@dataclass(frozen=True)
class AgreementReport:
    reviewers: list[ReviewerRow]
    labels: list[LabelRow]
    overall: Agreement
    double_labelled: int
    waiting_for_third: list[int]
    settled: int


def agreement_report() -> AgreementReport:
    labels = staff_labels()
    gold = dict(GoldItem.objects.values_list("turn_id", "is_correct"))
    with_others: dict[int, list[tuple]] = defaultdict(list)
    with_gold: dict[int, list[tuple]] = defaultdict(list)
    all_pairs: list[tuple] = []
    waiting, settled = [], 0
    for turn_id, by_reviewer in labels.items():
        for reviewer, label in by_reviewer.items():
            if turn_id in gold:
                with_gold[reviewer].append((label, gold[turn_id]))
        if len(by_reviewer) < 2:
            continue
        for (a, label_a), (b, label_b) in combinations(sorted(by_reviewer.items()), 2):
            with_others[a].append((label_a, label_b))
            with_others[b].append((label_b, label_a))
            all_pairs.append((label_a, label_b))
        if len(set(by_reviewer.values())) > 1:
            if settled_label(by_reviewer) is None:
                waiting.append(turn_id)
            else:
                settled += 1
    given = Counter(label for by_reviewer in labels.values() for label in by_reviewer.values())
    users = get_user_model().objects.in_bulk(
        {reviewer for by_reviewer in labels.values() for reviewer in by_reviewer}
    )
    reviewers = [
        ReviewerRow(
            reviewer=users.get(reviewer_id, reviewer_id),
            labels=sum(1 for by_reviewer in labels.values() if reviewer_id in by_reviewer),
            with_others=cohen_kappa(with_others[reviewer_id]),
            with_gold=cohen_kappa(with_gold[reviewer_id]),
        )
        for reviewer_id in sorted(users)
    ]
    return AgreementReport(
        reviewers=reviewers,
        labels=[_label_row(label, all_pairs, given[label]) for label in LABELS],
        overall=cohen_kappa(all_pairs),
        double_labelled=sum(1 for by_reviewer in labels.values() if len(by_reviewer) >= 2),
        waiting_for_third=sorted(waiting),
        settled=settled,
    )


def _label_row(label: bool, pairs: list[tuple], given: int) -> LabelRow:
    both = sum(1 for a, b in pairs if a == label and b == label)
    one = sum(1 for a, b in pairs if (a == label) != (b == label))
    specific = 100.0 * 2 * both / (2 * both + one) if both or one else None
    return LabelRow(
        label=LABELS[label],
        given=given,
        specific_percent=specific,
        kappa=cohen_kappa([(a == label, b == label) for a, b in pairs]).kappa,
    )
