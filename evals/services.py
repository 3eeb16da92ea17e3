"""Writes: staging turns, freezing dataset versions, moving named tags.

A version is made in one transaction, under a lock on its dataset row, so two staff freezing at
once get versions N+1 and N+2, never two N+1. Only `dataset_sync` calls MLflow (through
`chat.tracing`), and only from the `datasets sync` command.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from chat import tracing
from chat.models import Turn
from evals import selectors
from evals.exceptions import DatasetNotFound, NothingToFreeze
from evals.models import (
    Dataset,
    DatasetRecord,
    DatasetStage,
    DatasetSync,
    DatasetTag,
    DatasetVersion,
)

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
        if previous is not None and not (added or changed or remove):
            raise NothingToFreeze(
                f"{previous} already holds every corrected staged turn; nothing to freeze"
            )
        if previous is None and not records:
            raise NothingToFreeze(f"no staged turn of {dataset} has a staff correction yet")
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
        consumed = [s.pk for s in staged if s.turn_id in corrections]
        DatasetStage.objects.filter(pk__in=consumed).delete()
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
    from feedback.models import QueueItem

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
