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
    """Make the trace's assessments tagged `key` match: one valid feedback, one expectation.

    `feedback` is (name, value, rationale) or None to remove it; `expectation` the expected
    response or None. A changed feedback value supersedes the old one with `override_feedback`
    (MLflow keeps its history). Safe to repeat: what already matches is left alone.
    `known_empty` (nothing was ever sent for `key`) skips reading the trace first, which halves
    the calls on the common path.
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
        feedback_id = _sync_feedback(
            trace_id, [a for a in ours if a.feedback is not None], feedback, source, metadata
        )
        expectation_id = _sync_expectation(
            trace_id, [a for a in ours if a.expectation is not None], expectation, source, metadata
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TraceNotFound(f"trace {trace_id} is not in the tracking store yet") from exc
        raise TrackingUnavailable(short(exc)) from exc
    except Exception as exc:
        raise TrackingUnavailable(short(exc)) from exc
    return feedback_id, expectation_id


def _our_assessments(trace_id: str, key: str) -> list:
    from mlflow.tracing.client import TracingClient

    info = TracingClient(tracking_uri()).get_trace_info(trace_id)
    return [
        a
        for a in (info.assessments or [])
        if (a.metadata or {}).get(ASSESSMENT_KEY) == key and a.valid is not False
    ]


def _sync_feedback(trace_id, current, desired, source, metadata) -> str:
    if desired is None:
        _delete(trace_id, current)
        return ""
    name, value, rationale = desired
    kept = next((a for a in current if a.name == name), None)
    _delete(trace_id, [a for a in current if a is not kept])
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
        type(kept.feedback.value) is type(value)
        and kept.feedback.value == value
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


def _sync_expectation(trace_id, current, desired, source, metadata) -> str:
    kept = next((a for a in current if desired and a.expectation.value == desired), None)
    _delete(trace_id, [a for a in current if a is not kept])
    if not desired:
        return ""
    if kept is not None:
        return kept.assessment_id
    created = mlflow_api().log_expectation(
        trace_id=trace_id, name=EXPECTATION_NAME, value=desired, source=source, metadata=metadata
    )
    return created.assessment_id


def _delete(trace_id: str, assessments) -> None:
    for assessment in assessments:
        mlflow_api().delete_assessment(trace_id=trace_id, assessment_id=assessment.assessment_id)


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
