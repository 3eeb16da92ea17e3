"""Erasing a person: their data out of the database, then out of MLflow, then a check.

Why an app of its own: erasure reaches into chat (sessions, turns, messages, traces) and feedback
(everyone's feedback on those turns, and the person's feedback on other people's), so it must sit
above both. In chat it would make chat depend on feedback; in feedback it would make the feedback
app own users' accounts. Here dependencies stay one way: privacy -> feedback -> chat.

Two steps, each safe to repeat:
1. `user_erase` (one transaction, no MLflow call): the person's account, their conversations
   (hidden ones too), turns, messages, trace-export rows (so an undelivered trace is never
   delivered), feedback (theirs, and everyone's on their turns) and the evaluation dataset
   records made from their turns (out of frozen versions too: `evals.services.
   dataset_records_erase`) are deleted, and an `Erasure` record is written with the MLflow ids
   still to remove. This always completes, whatever MLflow
   is doing.
2. `erasure_finish`: their traces (found from the record and by MLflow search on
   `mlflow.trace.user`) are deleted with their artifact files and every assessment on them
   (staff labels included); the assessments they logged on other people's traces are deleted;
   the MLflow copies of dataset versions that held their records are deleted (the next
   `datasets sync` makes them anew; this needs the full mlflow package, not the SDK);
   then the search runs again and the record is completed only when nothing is left. When the
   tracking store is down the record stays `pending_mlflow` with the reason. The command and
   the admin run it at once; for DELETE /api/me/ (a web worker, which never imports MLflow) the
   feedback worker runs it within seconds (`erasures_finish_due`, its chore), and
   `manage.py erase_user --pending` finishes whatever is left.

A trace deliverer that was writing one of the person's traces when its row was deleted deletes
that trace itself once it sees the row gone (`chat.delivery`); the feedback deliverer does the
same for assessments. The record also waits for such a lease to end before it calls the erasure
verified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from chat import tracing
from chat.models import ChatSession, Message, TraceExport, Turn
from evals import services as evals_services
from feedback.models import Feedback
from privacy.models import Erasure

logger = logging.getLogger(__name__)


def user_erase(
    *,
    user: AbstractBaseUser,
    via: str,
    requested_by: AbstractBaseUser | None = None,
) -> Erasure:
    """Delete the person and everything of theirs from the database; returns the record.

    The MLflow part is left for `erasure_finish` (the record is `pending_mlflow` until then).
    """
    user_id = user.pk
    requested_by_id = requested_by.pk if requested_by is not None else None
    with transaction.atomic():
        account = get_user_model().objects.select_for_update().filter(pk=user_id)
        turns = Turn.objects.filter(Q(user_id=user_id) | Q(session__owner_id=user_id))
        exports = TraceExport.objects.filter(turn__in=turns)
        trace_ids = sorted(
            set(turns.exclude(trace_id="").values_list("trace_id", flat=True))
            | set(exports.values_list("trace_id", flat=True))
        )
        in_flight_until = exports.filter(leased_until__gt=timezone.now()).aggregate(
            until=Max("leased_until")
        )["until"]
        given_elsewhere = Feedback.objects.filter(user_id=user_id).exclude(turn__in=turns)
        rated_trace_ids = sorted(
            set(given_elsewhere.exclude(turn__trace_id="").values_list("turn__trace_id", flat=True))
        )
        feedback = Feedback.objects.filter(Q(user_id=user_id) | Q(turn__in=turns))
        messages = Message.objects.filter(Q(turn__in=turns) | Q(session__owner_id=user_id))
        sessions = ChatSession.objects.filter(owner_id=user_id)
        # The admin's history names what it changed (a username, a message's first words).
        admin_log = admin_log_about(
            (get_user_model(), [user_id]),
            (ChatSession, sessions.values_list("pk", flat=True)),
            (Turn, turns.values_list("pk", flat=True)),
            (Message, messages.values_list("pk", flat=True)),
            (Feedback, feedback.values_list("pk", flat=True)),
        )
        admin_log_removed = delete_counted(admin_log)
        # Before the turns go (a record's link to its turn is cleared when the turn is deleted).
        dataset_records, eval_datasets = evals_services.dataset_records_erase(
            turn_ids=list(turns.values_list("pk", flat=True))
        )
        rows = {
            "feedback": delete_counted(feedback),
            "trace_exports": delete_counted(exports),
            "messages": delete_counted(messages),
            "turns": delete_counted(turns),
            "sessions": delete_counted(sessions),
            "users": delete_counted(account),
            "admin_log": admin_log_removed,
            "dataset_records": dataset_records,
        }
        erasure = Erasure.objects.create(
            subject_user_id=user_id,
            requested_by_id=requested_by_id,
            via=via,
            rows_removed=rows,
            trace_ids=trace_ids,
            rated_trace_ids=rated_trace_ids,
            eval_datasets=eval_datasets,
            in_flight_until=in_flight_until,
        )
    logger.info(
        "erased user from the database erasure_id=%s user_id=%s rows=%s traces_to_remove=%s",
        erasure.pk,
        user_id,
        sum(rows.values()),
        len(trace_ids),
    )
    return erasure


def admin_log_about(*objects):
    """The admin's log entries about these objects ((model, ids) pairs)."""
    about = Q(pk__in=[])
    for model, ids in objects:
        content_type = ContentType.objects.get_for_model(model)
        about |= Q(content_type=content_type, object_id__in=[str(pk) for pk in ids])
    return LogEntry.objects.filter(about)


def delete_counted(queryset) -> int:
    """Delete and count the rows of the queryset's own model (cascades are counted apart)."""
    return queryset.delete()[1].get(queryset.model._meta.label, 0)


def erasure_finish(*, erasure: Erasure, progress: Callable[[str], None] | None = None) -> Erasure:
    """Remove the person's traces and assessments from MLflow and verify none is left.

    Completes the record when the check finds nothing; otherwise (tracking store down, something
    left, a delivery still in flight) leaves it `pending_mlflow` with the reason, to be run again.
    """
    say = progress or (lambda line: None)
    erasure = Erasure.objects.get(pk=erasure.pk)
    if erasure.state == Erasure.State.COMPLETED:
        return erasure
    user_id = erasure.subject_user_id
    source_id = str(user_id)
    erasure.attempts += 1
    erasure.last_attempt_at = timezone.now()
    try:
        if not tracing.is_ready():
            raise tracing.TrackingUnavailable(
                "tracing is not configured or the tracking store is down"
            )
        found = tracing.user_trace_ids(user_id=user_id)
        trace_ids = list(dict.fromkeys([*erasure.trace_ids, *found]))
        say(f"MLflow: {len(trace_ids)} trace(s) to delete ({len(found)} found by search)")
        erased = tracing.erase_traces(
            trace_ids=trace_ids,
            progress=lambda done, of: say(f"  [{done}/{of}] traces deleted"),
        )
        erasure.traces_removed += erased.traces
        erasure.artifacts_removed += erased.artifacts
        if erasure.rated_trace_ids:
            say(f"MLflow: their assessments on {len(erasure.rated_trace_ids)} other trace(s)")
            erasure.assessments_removed += tracing.erase_assessments(
                trace_ids=erasure.rated_trace_ids, source_id=source_id
            )
        if erasure.eval_datasets:
            say(f"MLflow: {len(erasure.eval_datasets)} evaluation dataset(s) holding their records")
            tracing.delete_eval_datasets(names=erasure.eval_datasets)
        say(f"verifying: search metadata.`mlflow.trace.user` = '{user_id}'")
        remaining = set(tracing.user_trace_ids(user_id=user_id))
        remaining |= set(tracing.existing_trace_ids(erasure.trace_ids))
        left_assessments = tracing.remaining_assessments(
            trace_ids=erasure.rated_trace_ids, source_id=source_id
        )
        left_datasets = tracing.existing_eval_datasets(names=erasure.eval_datasets)
    except tracing.TrackingUnavailable as exc:
        erasure.last_error = f"TrackingUnavailable: {exc}"[:2000]
        erasure.save()
        logger.warning(
            "erasure pending mlflow erasure_id=%s user_id=%s error=%s",
            erasure.pk,
            user_id,
            str(exc)[:200],
        )
        return erasure
    erasure.remaining_traces = len(remaining)
    erasure.remaining_assessments = left_assessments
    now = timezone.now()
    if remaining or left_assessments or left_datasets:
        erasure.last_error = (
            f"verification found {len(remaining)} trace(s), {left_assessments} assessment(s) "
            f"and {len(left_datasets)} evaluation dataset(s) left; run again"
        )
    elif erasure.in_flight_until and now < erasure.in_flight_until:
        erasure.last_error = (
            "a trace delivery was in flight when the person was erased; verified again after "
            f"{erasure.in_flight_until.isoformat()}"
        )
    else:
        erasure.state = Erasure.State.COMPLETED
        erasure.completed_at = now
        erasure.last_error = ""
        erasure.trace_ids = []
        erasure.rated_trace_ids = []
        erasure.eval_datasets = []
    erasure.save()
    logger.info(
        "erasure %s erasure_id=%s user_id=%s traces=%s assessments=%s remaining=%s",
        erasure.state,
        erasure.pk,
        user_id,
        erasure.traces_removed,
        erasure.assessments_removed,
        len(remaining) + left_assessments,
    )
    return erasure


def erasures_finish_due() -> list[str]:
    """The feedback worker's chore: finish erasures pending MLflow, each retried with backoff
    (5 s doubling to 5 min) while the tracking store is away; returns lines for its log."""
    now = timezone.now()
    lines = []
    for erasure in Erasure.objects.filter(state=Erasure.State.PENDING_MLFLOW).order_by("id"):
        wait = timedelta(seconds=min(5 * 2 ** max(erasure.attempts - 1, 0), 300))
        if erasure.last_attempt_at and now - erasure.last_attempt_at < wait:
            continue
        erasure = erasure_finish(erasure=erasure)
        lines.append(
            f"erasure {erasure.pk}: {erasure.state}, {erasure.traces_removed} traces removed"
            + (f" ({erasure.last_error[:120]})" if erasure.last_error else "")
        )
    return lines


def erasure_finish_pending(*, progress: Callable[[str], None] | None = None) -> list[Erasure]:
    """Run `erasure_finish` on every erasure still pending MLflow; returns them as they end."""
    pending = Erasure.objects.filter(state=Erasure.State.PENDING_MLFLOW).order_by("id")
    return [erasure_finish(erasure=erasure, progress=progress) for erasure in pending]
