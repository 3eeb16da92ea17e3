"""The one package that talks to MLflow; this module is its public surface.

- `setup`: configure once per process, where traces go, deployment metadata.
- `spans`: a chat turn's trace, recorded in memory on the request path (no MLflow call), and
  completed from the stored messages it names when it is written.
- `context`: W3C trace context, to join a caller's trace and pass ours on.
- `redaction`: masking personal data in a recorded trace (`TRACE_REDACT_PII`).
- `sampling`: which turns' traces are written at once (`TRACE_SAMPLE_RATIO`).
- `export`: writing recorded traces to MLflow, complete and idempotent (the delivery process).
- `assessments`: human feedback and expectations on a trace.
- `search`: finding traces by user, session, request id, tags, deployment and feedback.
- `datasets`: corrected production traces as an evaluation dataset; frozen dataset versions
  (the `evals` app) as MLflow evaluation datasets, one per version.
- `evaluation`: an evaluation run over a dataset version, as an MLflow run.
- `erasure`: a person's traces and assessments removed (files included), and the check after;
  the traces retention removes.
- `links`: links into the MLflow UI.
- `errors`: what callers catch; MLflow's own exceptions never leave this package.
"""

from chat.tracing.assessments import (
    EXPECTATION_NAME,
    StoredAssessment,
    assessments_by_trace,
    sync_assessments,
)
from chat.tracing.context import CallerContext, caller_context, passed_on
from chat.tracing.datasets import (
    VersionRecord,
    VersionSynced,
    delete_eval_datasets,
    existing_eval_datasets,
    merge_into_eval_dataset,
    sync_dataset_version,
    version_dataset_name,
)
from chat.tracing.erasure import (
    TracesErased,
    erase_assessments,
    erase_traces,
    existing_trace_ids,
    old_trace_ids,
    remaining_assessments,
    user_trace_ids,
)
from chat.tracing.errors import TraceNotFound, TrackingUnavailable, UnsafeFilterValue
from chat.tracing.evaluation import EvaluationLog, log_evaluation_run, run_ui_url
from chat.tracing.export import (
    delete_traces,
    experiment_trace_ids,
    trace_problems,
    write_traces,
)
from chat.tracing.links import session_ui_url, trace_link_html, trace_ui_url, ui_link_html
from chat.tracing.sampling import sample_ratio, trace_sampled
from chat.tracing.search import (
    ORDERINGS,
    SAFE_KEY,
    SAFE_VALUE,
    TracePage,
    TraceQuery,
    TraceSummary,
    search_traces,
    trace_filter_string,
)
from chat.tracing.setup import (
    configure,
    deployment_metadata,
    experiment_id,
    flush,
    is_ready,
    tracking_health,
    tracking_reachable,
)
from chat.tracing.spans import (
    USERNAME_KEY,
    WRITTEN_LATE_TAG,
    Span,
    TurnTrace,
    complete_payload,
    history_span,
    llm_span,
    message_refs,
    new_trace_id,
    turn_trace,
)

__all__ = [
    "EXPECTATION_NAME",
    "USERNAME_KEY",
    "WRITTEN_LATE_TAG",
    "CallerContext",
    "EvaluationLog",
    "ORDERINGS",
    "SAFE_KEY",
    "SAFE_VALUE",
    "Span",
    "StoredAssessment",
    "TraceNotFound",
    "TracePage",
    "TraceQuery",
    "TraceSummary",
    "TracesErased",
    "TrackingUnavailable",
    "TurnTrace",
    "UnsafeFilterValue",
    "VersionRecord",
    "VersionSynced",
    "assessments_by_trace",
    "caller_context",
    "complete_payload",
    "configure",
    "deployment_metadata",
    "experiment_id",
    "delete_eval_datasets",
    "delete_traces",
    "erase_assessments",
    "erase_traces",
    "existing_eval_datasets",
    "existing_trace_ids",
    "experiment_trace_ids",
    "old_trace_ids",
    "flush",
    "history_span",
    "is_ready",
    "llm_span",
    "log_evaluation_run",
    "merge_into_eval_dataset",
    "message_refs",
    "new_trace_id",
    "passed_on",
    "remaining_assessments",
    "run_ui_url",
    "sample_ratio",
    "search_traces",
    "session_ui_url",
    "sync_dataset_version",
    "sync_assessments",
    "trace_filter_string",
    "trace_link_html",
    "trace_problems",
    "trace_sampled",
    "trace_ui_url",
    "tracking_health",
    "tracking_reachable",
    "turn_trace",
    "ui_link_html",
    "user_trace_ids",
    "version_dataset_name",
    "write_traces",
]
