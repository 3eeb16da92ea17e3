"""Writes: staging turns, freezing dataset versions, moving named tags.

A version is made in one transaction, under a lock on its dataset row, so two staff freezing at
once get versions N+1 and N+2, never two N+1. Only `dataset_sync` calls MLflow (through
`chat.tracing`), and only from the `datasets sync` command.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from chat import tracing
from chat.exceptions import LLMTimeout, LLMUnavailable
from chat.llm import ChatMessage, get_chat_model
from chat.models import Turn
from evals import scoring, selectors
from evals.exceptions import DatasetNotFound, NothingToFreeze
from evals.models import (
    Dataset,
    DatasetRecord,
    DatasetStage,
    DatasetSync,
    DatasetTag,
    DatasetVersion,
    EvaluationResult,
    EvaluationRun,
)
from feedback.models import QueueItem

logger = logging.getLogger(__name__)

TAG_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,49}\Z")
Progress = Callable[[int, int], None]


def dataset_get_or_create(*, name: str) -> Dataset:
    dataset, _ = Dataset.objects.get_or_create(name=name)
    return dataset


def dataset_stage(*, dataset_name: str, turn: Turn, reason: str) -> bool:
    """Stage `turn` for the named dataset's next version (the dataset is made if missing).

    It joins the version frozen once staff have corrected it. Returns False when it is already
    staged. Called by the quality rules (`add to a dataset's next version`) and `datasets add`.
    """
    dataset = dataset_get_or_create(name=dataset_name)
    try:
        with transaction.atomic():
            DatasetStage.objects.create(dataset=dataset, turn=turn, reason=reason[:200])
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class VersionMade:
    version: DatasetVersion
    added: int
    changed: int
    removed: int
    kept: int
    waiting: int  # staged turns with no staff correction yet: they stay staged


def dataset_version_create(
    *,
    dataset: Dataset,
    created_by: AbstractBaseUser | None,
    note: str = "",
    remove_keys: Iterable[str] = (),
    progress: Progress | None = None,
) -> VersionMade:
    """Freeze version N+1: version N's records, minus `remove_keys`, plus every staged turn that
    now has a staff correction (a turn already in N gets its newest correction).

    Staged turns without a correction stay staged. Raises: NothingToFreeze.
    """
    remove = set(remove_keys)
    with transaction.atomic():
        # The lock serialises freezes of one dataset (version numbers, consumed stage rows).
        dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
        previous = selectors.dataset_latest_version(dataset=dataset)
        before = {r.key: r for r in previous.records.all()} if previous else {}
        unknown = remove - before.keys()
        if unknown:
            raise DatasetNotFound(f"not in {previous or dataset}: {', '.join(sorted(unknown))}")
        staged = list(selectors.staged_turns(dataset=dataset))
        corrections = selectors.staff_corrections(turn_ids=[s.turn_id for s in staged])
        fresh: dict[str, dict] = {}
        for done, stage in enumerate(staged, 1):
            correction = corrections.get(stage.turn_id)
            if correction is not None:
                fresh[selectors.record_key(stage.turn_id)] = _record_fields(stage.turn, correction)
            if progress and (done % 100 == 0 or done == len(staged)):
                progress(done, len(staged))
        records, added, changed = [], 0, 0
        for key, earlier in before.items():
            if key in remove:
                continue
            new = fresh.pop(key, None)
            if new is not None and (
                new["expectation"] != earlier.expectation or new["inputs"] != earlier.inputs
            ):
                changed += 1
                records.append(DatasetRecord(key=key, **new))
            else:
                records.append(_copy(earlier))
        for key, new in fresh.items():
            added += 1
            records.append(DatasetRecord(key=key, **new))
        consumed = [s.pk for s in staged if s.turn_id in corrections]
        # Staged turns already in N as they are were dealt with, even when no version is made.
        DatasetStage.objects.filter(pk__in=consumed).delete()
        nothing_new = not (added or changed or remove)
        if not nothing_new:
            version = DatasetVersion.objects.create(
                dataset=dataset,
                number=(previous.number + 1) if previous else 1,
                created_by=created_by,
                note=note,
                record_count=len(records),
            )
            for record in records:
                record.version = version
            DatasetRecord.objects.bulk_create(records, batch_size=500)
    if nothing_new:
        if previous is not None:
            raise NothingToFreeze(
                f"{previous} already holds every corrected staged turn; nothing to freeze"
            )
        raise NothingToFreeze(f"no staged turn of {dataset} has a staff correction yet")
    waiting = len(staged) - len(consumed)
    logger.info(
        "dataset version made version=%s records=%s added=%s changed=%s removed=%s waiting=%s",
        version,
        len(records),
        added,
        changed,
        len(remove),
        waiting,
    )
    return VersionMade(
        version=version,
        added=added,
        changed=changed,
        removed=len(remove),
        kept=len(records) - added - changed,
        waiting=waiting,
    )


def _record_fields(turn: Turn, correction) -> dict:
    return {
        "inputs": selectors.turn_inputs(turn=turn),
        "expectation": correction.expected_response,
        "turn": turn,
        "trace_id": turn.trace_id,
        "corrected_by_id": correction.user_id,
        "corrected_at": correction.updated_at,
        "queue_item_id": _queue_item_id(turn),
    }


def _queue_item_id(turn: Turn) -> int | None:
    return QueueItem.objects.filter(turn=turn).values_list("pk", flat=True).first()


def _copy(record: DatasetRecord) -> DatasetRecord:
    return DatasetRecord(
        key=record.key,
        inputs=record.inputs,
        expectation=record.expectation,
        turn_id=record.turn_id,
        trace_id=record.trace_id,
        corrected_by_id=record.corrected_by_id,
        corrected_at=record.corrected_at,
        queue_item_id=record.queue_item_id,
    )


def dataset_tag_move(
    *, dataset: Dataset, name: str, version: DatasetVersion, moved_by: AbstractBaseUser | None
) -> DatasetTag:
    """Point the tag `name` (`prod`, `candidate`, ...) of `dataset` at `version`.

    Raises: ValueError (a bad name, or a version of another dataset).
    """
    if not TAG_NAME.match(name) or selectors.VERSION_REF.match(name):
        raise ValueError(
            f"tag {name!r}: lower-case letters, digits, - and _, starting with a letter, "
            "and not v<N> (that names a version)"
        )
    if version.dataset_id != dataset.pk:
        raise ValueError(f"{version} is not a version of {dataset}")
    with transaction.atomic():
        tag = DatasetTag.objects.select_for_update().filter(dataset=dataset, name=name).first()
        before = tag.version if tag else None
        if tag is None:
            tag = DatasetTag(dataset=dataset, name=name)
        tag.version = version
        tag.moved_by = moved_by
        tag.save()
    logger.info(
        "dataset tag moved dataset=%s tag=%s from=%s to=v%s by=%s",
        dataset.name,
        name,
        f"v{before.number}" if before else "-",
        version.number,
        getattr(moved_by, "pk", None),
    )
    return tag


def dataset_tag_delete(*, tag: DatasetTag, deleted_by: AbstractBaseUser | None) -> None:
    logger.info(
        "dataset tag deleted dataset=%s tag=%s was=v%s by=%s",
        tag.dataset.name,
        tag.name,
        tag.version.number,
        getattr(deleted_by, "pk", None),
    )
    tag.delete()


# --- MLflow copy (a command's job: needs the full MLflow package, never on a request) ----------


@dataclass(frozen=True)
class VersionSyncResult:
    version: DatasetVersion
    mlflow_name: str
    records: int
    merged: bool  # records were written this time (not only tags)


def dataset_sync(
    *, dataset: Dataset, progress: Callable[[str], None] | None = None
) -> list[VersionSyncResult]:
    """Copy every version of `dataset` to MLflow (one evaluation dataset per version) and mirror
    where its named tags point now. Versions already there get only their tags checked.

    Raises: tracing.TrackingUnavailable (what was synced before stays recorded).
    """
    tags_by_version: dict[int, list[str]] = {}
    for name, version_id in dataset.tags.values_list("name", "version_id"):
        tags_by_version.setdefault(version_id, []).append(name)
    done = []
    for version in dataset.versions.order_by("number"):
        named = sorted(tags_by_version.get(version.pk, []))
        sync = DatasetSync.objects.filter(version=version).first()
        if sync and sync.records and sync.tags == named:
            done.append(VersionSyncResult(version, sync.mlflow_name, sync.records, False))
            continue
        records = [] if sync and sync.records else _version_records(version)

        def merged(n: int, of: int, version=version) -> None:
            if progress:
                progress(f"  {version}: merged {n}/{of} records")

        synced = tracing.sync_dataset_version(
            dataset=dataset.name,
            number=version.number,
            records=records,
            named_tags=named,
            dataset_id=sync.mlflow_dataset_id if sync else "",
            progress=merged,
        )
        DatasetSync.objects.update_or_create(
            version=version,
            defaults={
                "mlflow_dataset_id": synced.dataset_id,
                "mlflow_name": synced.name,
                "records": synced.records,
                "tags": named,
            },
        )
        logger.info(
            "dataset version synced version=%s mlflow_dataset_id=%s records=%s tags=%s",
            version,
            synced.dataset_id,
            synced.records,
            ",".join(named),
        )
        done.append(VersionSyncResult(version, synced.name, synced.records, bool(records)))
    return done


def _version_records(version: DatasetVersion) -> list[tracing.VersionRecord]:
    return [
        tracing.VersionRecord(
            key=r.key,
            messages=r.inputs,
            expectation=r.expectation,
            trace_id=r.trace_id,
            turn_id=r.turn_id,
            corrected_by=r.corrected_by_id,
            corrected_at=r.corrected_at.isoformat() if r.corrected_at else "",
        )
        for r in version.records.order_by("id")
    ]


# --- Evaluation ----------------------------------------------------------------------------------

DECIDED_BY = ("match", "judge", "either")


@dataclass(frozen=True)
class _Scored:
    record_id: int
    key: str
    output: str
    match: scoring.Match | None
    verdict: scoring.Verdict | None
    error: str = ""


@dataclass
class EvaluationOutcome:
    run: EvaluationRun
    previous: EvaluationRun | None
    newly_failing: list[DatasetRecord]
    newly_passing: list[DatasetRecord]
    judge_skipped: str  # why the judge did not run ("" when it did)
    mlflow_error: str  # why the MLflow run is missing ("" when it was logged)


def evaluation_run(
    *,
    version: DatasetVersion,
    asked_as: str = "",
    system_prompt: str | None = None,
    use_judge: bool | None = None,
    decide_by: str = "match",
    threshold: float | None = None,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> EvaluationOutcome:
    """Run the assistant as configured (LLM_SYSTEM_PROMPT, or `system_prompt`, and the chat model
    seam) over `version`'s records, score each answer, store the run and log it to MLflow.

    A regression (a record that passed in the previous completed run on this version fails now,
    or a lower pass rate) is recorded on the run; the command turns it into its exit status.
    Raises: ValueError (a judge asked to decide with no model configured).
    """
    model = get_chat_model()
    system_prompt = settings.LLM_SYSTEM_PROMPT if system_prompt is None else system_prompt
    threshold = settings.EVAL_MATCH_THRESHOLD if threshold is None else threshold
    concurrency = concurrency or settings.EVAL_CONCURRENCY
    if decide_by not in DECIDED_BY:
        raise ValueError(f"decide_by {decide_by!r}: one of {', '.join(DECIDED_BY)}")
    judge_skipped = ""
    if not settings.LLM_BASE_URL:
        judge_skipped = "no model configured (LLM_BASE_URL is empty): the local responder"
    elif use_judge is False or (use_judge is None and not settings.EVAL_JUDGE):
        judge_skipped = "turned off (EVAL_JUDGE=false or --no-judge)"
    if judge_skipped and decide_by != "match":
        raise ValueError(f"--decide-by {decide_by} needs the LLM judge, which is {judge_skipped}")
    records = list(version.records.order_by("id"))
    run = EvaluationRun.objects.create(
        version=version,
        asked_as=asked_as,
        app_version=settings.APP_VERSION,
        model=model.model,
        system_prompt=system_prompt,
        system_prompt_sha256=hashlib.sha256(system_prompt.encode()).hexdigest(),
        judge_model="" if judge_skipped else model.model,
        decided_by=decide_by,
        match_threshold=threshold,
        records=len(records),
    )
    try:
        scored = asyncio.run(
            _score_all(
                records,
                model=model,
                system_prompt=system_prompt,
                judge=not judge_skipped,
                threshold=threshold,
                concurrency=concurrency,
                progress=progress,
            )
        )
    except BaseException:
        EvaluationRun.objects.filter(pk=run.pk).update(
            state=EvaluationRun.State.FAILED, finished_at=timezone.now()
        )
        raise
    results = [
        EvaluationResult(
            run=run,
            record_id=s.record_id,
            passed=_passed(s, decide_by),
            output=s.output,
            score=s.match.score if s.match else 0.0,
            exact=bool(s.match and s.match.exact),
            judge_passed=s.verdict.passed if s.verdict else None,
            judge_rationale=s.verdict.rationale if s.verdict else "",
            error=s.error,
        )
        for s in scored
    ]
    EvaluationResult.objects.bulk_create(results, batch_size=500)
    by_id = {r.pk: r for r in records}
    run.passed = sum(r.passed for r in results)
    run.errors = sum(bool(r.error) for r in results)
    run.judged_passed = None if judge_skipped else sum(r.judge_passed is True for r in results)
    run.previous = selectors.run_previous(run=run)
    newly_failing, newly_passing = [], []
    if run.previous is not None:
        before = selectors.run_outcomes(run=run.previous)
        for result in results:
            record = by_id[result.record_id]
            was = before.get(record.key)
            if was and not result.passed:
                newly_failing.append(record)
            elif was is False and result.passed:
                newly_passing.append(record)
        lower = (run.pass_rate or 0) < (run.previous.pass_rate or 0)
        run.regression = bool(newly_failing) or lower
    run.newly_failing, run.newly_passing = len(newly_failing), len(newly_passing)
    # A model that answered nothing is an outage, not a verdict on the prompt.
    all_errors = bool(records) and run.errors == len(records)
    run.state = EvaluationRun.State.FAILED if all_errors else EvaluationRun.State.COMPLETED
    run.finished_at = timezone.now()
    run.save()
    mlflow_error = ""
    try:
        run.mlflow_run_id = tracing.log_evaluation_run(_mlflow_log(run, scored, by_id, decide_by))
        run.save(update_fields=["mlflow_run_id"])
    except tracing.TrackingUnavailable as exc:
        mlflow_error = str(exc)
    logger.info(
        "evaluation run run=%s version=%s passed=%s records=%s errors=%s regression=%s "
        "app_version=%s prompt_sha256=%s mlflow_run=%s",
        run.pk,
        version,
        run.passed,
        run.records,
        run.errors,
        run.regression,
        run.app_version,
        run.system_prompt_sha256[:12],
        run.mlflow_run_id or "-",
    )
    return EvaluationOutcome(
        run=run,
        previous=run.previous,
        newly_failing=newly_failing,
        newly_passing=newly_passing,
        judge_skipped=judge_skipped,
        mlflow_error=mlflow_error,
    )


def _passed(scored: _Scored, decide_by: str) -> bool:
    if scored.error or scored.match is None:
        return False
    judged = bool(scored.verdict and scored.verdict.passed)
    if decide_by == "judge":
        return judged
    if decide_by == "either":
        return scored.match.passed or judged
    return scored.match.passed


async def _score_all(
    records: list[DatasetRecord],
    *,
    model,
    system_prompt: str,
    judge: bool,
    threshold: float,
    concurrency: int,
    progress: Progress | None,
) -> list[_Scored]:
    gate = asyncio.Semaphore(concurrency)

    async def one(record: DatasetRecord) -> _Scored:
        messages = [
            ChatMessage("system", system_prompt),
            *(ChatMessage(m["role"], m["content"]) for m in record.inputs),
        ]
        async with gate:
            try:
                reply = await model.complete(messages)
            except (LLMTimeout, LLMUnavailable) as exc:
                return _Scored(record.pk, record.key, "", None, None, error=str(exc))
            output = reply.content
            match = scoring.match_expected(
                output=output, expected=record.expectation, threshold=threshold
            )
            verdict = None
            if judge:
                try:
                    verdict = await scoring.judge(
                        model=model,
                        question=record.question,
                        expected=record.expectation,
                        output=output,
                    )
                except (LLMTimeout, LLMUnavailable) as exc:
                    verdict = scoring.Verdict(passed=None, rationale=f"the judge failed: {exc}")
        return _Scored(record.pk, record.key, output, match, verdict)

    scored: list[_Scored] = []
    every = max(1, len(records) // 10)
    try:
        for task in asyncio.as_completed([one(r) for r in records]):
            scored.append(await task)
            if progress and (len(scored) % every == 0 or len(scored) == len(records)):
                progress(len(scored), len(records))
    finally:
        await model.aclose()  # its client's connections, before this event loop ends
    return scored


def _mlflow_log(run: EvaluationRun, scored, by_id, decide_by: str) -> tracing.EvaluationLog:
    version = run.version
    sync = DatasetSync.objects.filter(version=version).first()
    outcome = {r.record_id: r for r in run.results.all()}
    rows = sorted(scored, key=lambda s: s.record_id)
    metrics = {
        "records": run.records,
        "passed": run.passed,
        "pass_rate": run.pass_rate or 0.0,
        "errors": run.errors,
        "exact_matches": sum(bool(s.match and s.match.exact) for s in rows),
        "mean_match_score": (
            round(sum(s.match.score for s in rows if s.match) / len(rows), 4) if rows else 0.0
        ),
        "newly_failing": run.newly_failing,
        "newly_passing": run.newly_passing,
    }
    if run.judged_passed is not None:
        metrics["judge_pass_rate"] = round(run.judged_passed / run.records, 4) if rows else 0.0
    return tracing.EvaluationLog(
        run_name=f"evaluate {version} ({run.app_version})",
        params={
            "dataset": version.dataset.name,
            "dataset_version": str(version.number),
            "dataset_ref": str(version),
            "asked_as": run.asked_as or "-",
            "app_version": run.app_version,
            "model": run.model,
            "judge_model": run.judge_model or "-",
            "system_prompt_sha256": run.system_prompt_sha256,
            "decide_by": decide_by,
            "match_threshold": str(run.match_threshold),
            "previous_run": str(run.previous_id or "-"),
        },
        tags={
            "chat.evaluation_run": str(run.pk),
            "dataset": version.dataset.name,
            "dataset_version": str(version.number),
            "app_version": run.app_version,
            "regression": str(run.regression).lower(),
        },
        metrics=metrics,
        table={
            "record_key": [s.key for s in rows],
            "question": [by_id[s.record_id].question for s in rows],
            "expected": [by_id[s.record_id].expectation for s in rows],
            "output": [s.output for s in rows],
            "passed": [outcome[s.record_id].passed for s in rows],
            "match_score": [s.match.score if s.match else 0.0 for s in rows],
            "judge": [None if not s.verdict else s.verdict.passed for s in rows],
            "error": [s.error for s in rows],
        },
        dataset_id=sync.mlflow_dataset_id if sync else "",
    )


def dataset_records_erase(*, turn_ids: Iterable[int]) -> tuple[int, list[str]]:
    """Take the records made from these turns out of every version, for a person's erasure.

    The one change a frozen version allows: an erased person's conversation must not live on in
    a dataset. Their records go (with their results in evaluation runs), each version counts
    what it lost in `erased_records`, and its MLflow copy is forgotten here so the next
    `datasets sync` makes it again without them. Returns how many records went and the names of
    the MLflow copies (`<name>@v<N>`) that held them, for the erasure to delete from MLflow.
    Call inside the erasure's transaction.
    """
    records = models.QuerySet(DatasetRecord).filter(turn_id__in=list(turn_ids))
    lost = Counter(records.values_list("version_id", flat=True))
    if not lost:
        return 0, []
    versions = DatasetVersion.objects.select_related("dataset").in_bulk(list(lost))
    EvaluationResult.objects.filter(record__in=records).delete()
    records.delete()
    for version_id, count in lost.items():
        models.QuerySet(DatasetVersion).filter(pk=version_id).update(
            record_count=F("record_count") - count, erased_records=F("erased_records") + count
        )
    DatasetSync.objects.filter(version_id__in=list(lost)).delete()
    logger.info("dataset records erased records=%s versions=%s", lost.total(), len(lost))
    return lost.total(), sorted(
        tracing.version_dataset_name(version.dataset.name, version.number)
        for version in versions.values()
    )
