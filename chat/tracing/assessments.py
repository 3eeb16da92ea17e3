"""Human feedback on a trace: make MLflow's assessments match what the database says.

MLflow is imported on first use (see `setup.mlflow_api`); every call here is in its tracing SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chat.tracing.errors import TraceNotFound, TrackingUnavailable, short
from chat.tracing.setup import mlflow_api, tracking_uri

ASSESSMENT_KEY = "chat.feedback_id"
EXPECTATION_NAME = "expected_response"


def sync_assessments(
    *,
    trace_id: str,
    key: str,
    source_id: str,
    feedback: tuple[str, bool | int, str] | None,
    expectation: str | None,
    known_empty: bool = False,
) -> tuple[str, str]:
    """Make the trace's assessments tagged `key` exactly: one valid feedback, one expectation.

    `feedback` is (name, value, rationale) or None for none; `expectation` the expected
    response or None. Every assessment tagged `key`, whatever its name and valid or superseded,
    that is neither the wanted feedback (with the history it supersedes) nor the wanted
    expectation is deleted. A changed feedback value supersedes the old one with
    `override_feedback` (MLflow keeps its history). Safe to repeat: what already matches is left
    alone. `known_empty` (nothing was ever sent for `key`) skips reading the trace first, which
    halves the calls on the common path.
    Returns the (feedback, expectation) assessment ids, "" for none.
    Raises: TraceNotFound, TrackingUnavailable.
    """
    mlflow_api()
    from mlflow.entities import AssessmentSource
    from mlflow.exceptions import MlflowException

    source = AssessmentSource(source_type="HUMAN", source_id=source_id)
    metadata = {ASSESSMENT_KEY: key}
    try:
        ours = [] if known_empty else _our_assessments(trace_id, key)
        vote, expected, stale = _reconcile(ours, feedback, expectation)
        _delete(trace_id, stale)
        feedback_id = _write_feedback(trace_id, vote, feedback, source, metadata)
        expectation_id = _write_expectation(trace_id, expected, expectation, source, metadata)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TraceNotFound(f"trace {trace_id} is not in the tracking store yet") from exc
        raise TrackingUnavailable(short(exc)) from exc
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return feedback_id, expectation_id


def _our_assessments(trace_id: str, key: str) -> list:
    """Every assessment tagged `key`, superseded ones included: deleting a superseding one
    makes MLflow restore the one it superseded to valid, so those must be seen too."""
    from mlflow.tracing.client import TracingClient

    info = TracingClient(tracking_uri()).get_trace_info(trace_id)
    return [a for a in (info.assessments or []) if (a.metadata or {}).get(ASSESSMENT_KEY) == key]


def _reconcile(ours: list, feedback, expectation: str | None) -> tuple[Any, Any, list]:
    """What to keep of `ours` (the valid feedback of the wanted name, the expectation with the
    wanted value, either None) and what to delete: all the rest, whatever its name."""
    vote = None
    if feedback is not None:
        name, value, _ = feedback
        same_name = [
            a for a in ours if a.feedback is not None and a.valid is not False and a.name == name
        ]
        right = [a for a in same_name if _same_value(a.feedback.value, value)]
        vote = next(iter(right or same_name), None)
    expected = next(
        (
            a
            for a in ours
            if expectation
            and a.expectation is not None
            and a.valid is not False
            and a.expectation.value == expectation
        ),
        None,
    )
    by_id = {a.assessment_id: a for a in ours}
    kept = {a.assessment_id for a in (vote, expected) if a is not None}
    history = set()
    superseded = vote.overrides if vote is not None else None
    while superseded in by_id and superseded not in history:
        history.add(superseded)
        superseded = by_id[superseded].overrides
    stale = by_id.keys() - kept - history
    # Two deliverers overriding one feedback at once leave two heads over one superseded
    # assessment: deleting the stray head would make that one valid again, so it goes too, and
    # what it supersedes, down the line.
    reached = stale
    while reached:
        reached = ({by_id[a].overrides for a in reached} & by_id.keys()) - stale - kept
        stale |= reached
    return vote, expected, [a for a in ours if a.assessment_id in stale]


def _delete(trace_id: str, assessments: list) -> None:
    """Delete these assessments, each after the one it supersedes.

    MLflow makes the assessment a deleted one superseded valid again; deleted in this order, what
    it would restore is already gone, so nothing we remove comes back.
    """
    from mlflow.exceptions import MlflowException

    left = {a.assessment_id: a for a in assessments}
    while left:
        ready = [a for a in left.values() if a.overrides not in left] or list(left.values())
        for assessment in ready:
            try:
                mlflow_api().delete_assessment(
                    trace_id=trace_id, assessment_id=assessment.assessment_id
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # already gone: what we want
                    raise
            del left[assessment.assessment_id]


def _write_feedback(trace_id, kept, desired, source, metadata) -> str:
    if desired is None:
        return ""
    name, value, rationale = desired
    if kept is None:
        created = mlflow_api().log_feedback(
            trace_id=trace_id,
            name=name,
            value=value,
            rationale=rationale or None,
            source=source,
            metadata=metadata,
        )
        return created.assessment_id
    unchanged = (
        _same_value(kept.feedback.value, value)
        and (kept.rationale or "") == (rationale or "")
        and kept.source.source_id == source.source_id
    )
    if unchanged:
        return kept.assessment_id
    created = mlflow_api().override_feedback(
        trace_id=trace_id,
        assessment_id=kept.assessment_id,
        value=value,
        rationale=rationale or None,
        source=source,
        metadata=metadata,
    )
    return created.assessment_id


def _write_expectation(trace_id, kept, desired, source, metadata) -> str:
    if not desired:
        return ""
    if kept is not None:
        return kept.assessment_id
    created = mlflow_api().log_expectation(
        trace_id=trace_id, name=EXPECTATION_NAME, value=desired, source=source, metadata=metadata
    )
    return created.assessment_id


def _same_value(stored, wanted) -> bool:
    # `True == 1`, yet a thumbs-up is not a rating of 1; a rating comes back over REST as 4.0.
    return isinstance(stored, bool) == isinstance(wanted, bool) and stored == wanted


@dataclass(frozen=True)
class StoredAssessment:
    """One valid assessment as MLflow has it, tagged with the feedback row it came from."""

    assessment_id: str
    name: str
    value: Any
    key: str | None
    is_expectation: bool


def assessments_by_trace(trace_ids: Sequence[str]) -> dict[str, list[StoredAssessment]]:
    """The valid assessments of each trace (traces MLflow does not have are left out).

    Raises: TrackingUnavailable.
    """
    mlflow_api()
    from mlflow.tracing.client import TracingClient

    client = TracingClient(tracking_uri())
    try:
        infos = client.store.batch_get_trace_infos(list(trace_ids))
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    found: dict[str, list[StoredAssessment]] = {}
    for info in infos:
        found[info.trace_id] = [
            StoredAssessment(
                assessment_id=a.assessment_id,
                name=a.name,
                value=a.expectation.value if a.expectation is not None else a.feedback.value,
                key=(a.metadata or {}).get(ASSESSMENT_KEY),
                is_expectation=a.expectation is not None,
            )
            for a in (info.assessments or [])
            if a.valid is not False
        ]
    return found
