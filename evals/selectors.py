"""Reads: resolving `NAME@TAG`, corrections waiting for a version, diffs, a turn's lifecycle."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import QuerySet

from chat import selectors as chat_selectors
from chat.models import Message, Turn
from evals.exceptions import DatasetNotFound
from evals.models import (
    Dataset,
    DatasetRecord,
    DatasetStage,
    DatasetTag,
    DatasetVersion,
    EvaluationResult,
    EvaluationRun,
)
from feedback.models import Feedback, QueueItem

VERSION_REF = re.compile(r"^v(\d+)\Z")


def record_key(turn_id: int) -> str:
    return f"turn:{turn_id}"


def dataset_get(*, name: str) -> Dataset:
    """Raises: DatasetNotFound."""
    try:
        return Dataset.objects.get(name=name)
    except Dataset.DoesNotExist:
        raise DatasetNotFound(f"no dataset named {name!r}") from None


def dataset_latest_version(*, dataset: Dataset) -> DatasetVersion | None:
    return dataset.versions.order_by("-number").first()


def version_resolve(*, ref: str) -> tuple[DatasetVersion, str]:
    """`NAME@TAG`, `NAME@vN` or `NAME` (its latest version); returns (version, what after @).

    Raises: DatasetNotFound.
    """
    name, _, after = ref.partition("@")
    dataset = dataset_get(name=name)
    if not after:
        version = dataset_latest_version(dataset=dataset)
        if version is None:
            raise DatasetNotFound(f"dataset {name!r} has no version yet")
        return version, ""
    if match := VERSION_REF.match(after):
        try:
            return dataset.versions.get(number=int(match[1])), after
        except DatasetVersion.DoesNotExist:
            raise DatasetNotFound(f"dataset {name!r} has no version {after}") from None
    try:
        tag = DatasetTag.objects.select_related("version").get(dataset=dataset, name=after)
    except DatasetTag.DoesNotExist:
        raise DatasetNotFound(f"dataset {name!r} has no tag {after!r}") from None
    return tag.version, after


def staff_corrections(*, turn_ids: Iterable[int]) -> dict[int, Feedback]:
    """The newest live staff correction (a non-empty expected answer) of each turn, by turn id."""
    rows = (
        Feedback.objects.filter(turn_id__in=list(turn_ids), withdrawn=False, user__is_staff=True)
        .exclude(expected_response="")
        .order_by("turn_id", "-updated_at", "-id")
    )
    found: dict[int, Feedback] = {}
    for row in rows:
        found.setdefault(row.turn_id, row)
    return found


def turn_inputs(*, turn: Turn) -> list[dict[str, str]]:
    """The conversation as the model saw it for `turn`: earlier turns (as many as chat sends,
    CHAT_HISTORY_TURNS) and the turn's own question, as chat messages without the system prompt.
    """
    history = chat_selectors.history_for_llm(
        session=turn.session, before=turn, max_turns=settings.CHAT_HISTORY_TURNS
    )
    question = Message.objects.filter(turn=turn, role=Message.Role.USER).order_by("id").first()
    messages = [m.as_dict() for m in history]
    if question is not None:
        messages.append({"role": "user", "content": question.content})
    return messages


def staged_turns(*, dataset: Dataset) -> QuerySet[DatasetStage]:
    return dataset.staged.select_related("turn")


def corrected_turns_outside(*, dataset: Dataset, since=None) -> QuerySet[Turn]:
    """Turns with a staff correction that are neither staged nor in the latest version
    (with the same expectation): what `datasets add --corrected` would stage."""
    corrected = Feedback.objects.filter(withdrawn=False, user__is_staff=True).exclude(
        expected_response=""
    )
    turns = Turn.objects.filter(pk__in=corrected.values("turn_id"))
    if since:
        turns = turns.filter(created_at__gte=since)
    turns = turns.exclude(pk__in=dataset.staged.values("turn_id"))
    latest = dataset_latest_version(dataset=dataset)
    if latest is not None:
        turns = turns.exclude(pk__in=latest.records.exclude(turn=None).values("turn_id"))
    return turns.order_by("id")


@dataclass
class DatasetDiff:
    old: DatasetVersion
    new: DatasetVersion
    added: list[DatasetRecord] = field(default_factory=list)
    removed: list[DatasetRecord] = field(default_factory=list)
    changed: list[tuple[DatasetRecord, DatasetRecord]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def summary(self) -> str:
        return (
            f"{self.old} → {self.new}: {len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed expectation, {self.unchanged} unchanged"
        )


def dataset_diff(*, old: DatasetVersion, new: DatasetVersion) -> DatasetDiff:
    """Records added, removed, and whose expectation (or inputs) changed, paired by key."""
    before = {r.key: r for r in old.records.all()}
    after = {r.key: r for r in new.records.all()}
    diff = DatasetDiff(old=old, new=new)
    for key, record in after.items():
        earlier = before.get(key)
        if earlier is None:
            diff.added.append(record)
        elif earlier.expectation != record.expectation or earlier.inputs != record.inputs:
            diff.changed.append((earlier, record))
        else:
            diff.unchanged += 1
    diff.removed = [r for key, r in before.items() if key not in after]
    return diff


# --- Evaluation runs ---------------------------------------------------------------------------


def run_previous(*, run: EvaluationRun) -> EvaluationRun | None:
    """The last completed run on the same version, scored the same way, before `run`."""
    return (
        EvaluationRun.objects.filter(
            version=run.version,
            state=EvaluationRun.State.COMPLETED,
            decided_by=run.decided_by,
            match_threshold=run.match_threshold,
            id__lt=run.pk,
        )
        .order_by("-id")
        .first()
    )


def run_outcomes(*, run: EvaluationRun) -> dict[str, bool]:
    """Whether each record passed in `run`, by record key."""
    return dict(run.results.values_list("record__key", "passed"))


# --- A disliked answer's lifecycle -------------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """Where one turn stands: the review, the dataset version, the evaluations.

    `stage` is the furthest step reached: "not queued", "new", "in review", "not a problem",
    "corrected", "in dataset", "passing", "failing".
    """

    stage: str
    queue_state: str | None  # QueueItem.State value, None when never queued
    queue_reason: str = ""
    corrected: bool = False
    first_version: DatasetVersion | None = None
    staged_in: tuple[str, ...] = ()
    latest_run: EvaluationRun | None = None
    passing_since: EvaluationRun | None = None  # set when the latest run passed
    failing_since: EvaluationRun | None = None  # set when the latest run failed

    def as_dict(self) -> dict:
        """Plain values, for an API or a report row."""

        def run(r):
            return (
                {"id": r.pk, "version": str(r.version), "app_version": r.app_version} if r else None
            )

        return {
            "stage": self.stage,
            "label": self.label,
            "queue_state": self.queue_state,
            "queue_reason": self.queue_reason,
            "corrected": self.corrected,
            "first_version": str(self.first_version) if self.first_version else None,
            "staged_in": list(self.staged_in),
            "latest_run": run(self.latest_run),
            "passing_since": run(self.passing_since),
            "failing_since": run(self.failing_since),
        }

    @property
    def label(self) -> str:
        """One line for a page: "passing since run 12 (chat@v2)", "in review", ..."""
        if self.passing_since is not None:
            return f"passing since evaluation run {self.passing_since.pk}"
        if self.failing_since is not None:
            return f"still failing (since evaluation run {self.failing_since.pk})"
        if self.first_version is not None:
            return f"in dataset version {self.first_version}"
        return self.stage


def turn_lifecycle(*, turn: Turn) -> Lifecycle:
    """The lifecycle of `turn`: new → in review → corrected (or not a problem) → in dataset
    version N → passing since evaluation run R (or still failing). A few queries, no MLflow.
    """
    return turn_lifecycles(turn_ids=[turn.pk])[turn.pk]


def turn_lifecycles(*, turn_ids: Iterable[int]) -> dict[int, Lifecycle]:
    """`turn_lifecycle` for many turns (a review queue page, a report) in five queries."""
    ids = list(turn_ids)
    items = {i.turn_id: i for i in QueueItem.objects.filter(turn_id__in=ids)}
    corrected = staff_corrections(turn_ids=ids)
    first: dict[int, DatasetVersion] = {}
    for record in (
        DatasetRecord.objects.filter(turn_id__in=ids)
        .select_related("version", "version__dataset")
        .order_by("version__created_at", "version_id")
    ):
        first.setdefault(record.turn_id, record.version)
    staged: dict[int, list[str]] = {}
    for turn_id, name in DatasetStage.objects.filter(turn_id__in=ids).values_list(
        "turn_id", "dataset__name"
    ):
        staged.setdefault(turn_id, []).append(name)
    # Newest run first; the streak of equal outcomes from the newest back is what is reported.
    results: dict[int, list[EvaluationResult]] = {}
    for result in (
        EvaluationResult.objects.filter(
            record__turn_id__in=ids, run__state=EvaluationRun.State.COMPLETED
        )
        .select_related("record", "run", "run__version", "run__version__dataset")
        .order_by("-run_id")
    ):
        results.setdefault(result.record.turn_id, []).append(result)
    return {
        turn_id: _lifecycle(
            item=items.get(turn_id),
            corrected=turn_id in corrected,
            first=first.get(turn_id),
            staged=tuple(staged.get(turn_id, ())),
            results=results.get(turn_id, []),
        )
        for turn_id in ids
    }


def _lifecycle(
    *,
    item: QueueItem | None,
    corrected: bool,
    first: DatasetVersion | None,
    staged: tuple[str, ...],
    results: list[EvaluationResult],
) -> Lifecycle:
    latest_run = results[0].run if results else None
    since = None
    if results:
        streak = results[0].passed
        for result in results:
            if result.passed != streak:
                break
            since = result.run
    passing = results[0].passed if results else None
    if results:
        stage = "passing" if passing else "failing"
    elif first is not None:
        stage = "in dataset"
    elif corrected and (item is None or item.state != QueueItem.State.NOT_A_PROBLEM):
        # A staff correction is the step, whether or not the queue item was closed yet.
        stage = "corrected"
    elif item is None:
        stage = "not queued"
    else:
        stage = item.get_state_display().lower()
    return Lifecycle(
        stage=stage,
        queue_state=item.state if item else None,
        queue_reason=item.reason if item else "",
        corrected=corrected or (item is not None and item.state == QueueItem.State.CORRECTED),
        first_version=first,
        staged_in=staged,
        latest_run=latest_run,
        passing_since=since if passing else None,
        failing_since=since if passing is False else None,
    )
