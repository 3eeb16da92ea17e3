"""Reads. Every selector is scoped to its owner: someone else's objects do not exist (404)."""

from collections.abc import Sequence
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from chat import tracing
from chat.exceptions import TracesUnavailable
from chat.llm import ChatMessage
from chat.models import ChatSession, Message, TraceExport, Turn
from chatproject.db import prepared


def session_list(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    return ChatSession.objects.filter(owner=user, deleted_at__isnull=True).order_by(
        "-updated_at", "-created_at"
    )


def _session_pk(connection, session_id):
    return ChatSession._meta.pk.get_db_prep_value(session_id, connection, prepared=False)


# Every later turn of a conversation reads these two (chatproject.db.prepared: compiled once).
_OWN_SESSION = prepared.Read(
    ChatSession,
    lambda owner_id, session_id: ChatSession.objects.filter(
        owner_id=owner_id, pk=session_id, deleted_at__isnull=True
    ),
    lambda connection, owner_id, session_id: (owner_id, _session_pk(connection, session_id)),
)
_HISTORY = prepared.Read(
    Message,
    lambda session_id, before_id, *, max_turns: (
        Message.objects.filter(
            turn_id__in=Turn.objects.filter(
                session_id=session_id, status=Turn.Status.COMPLETED, id__lt=before_id
            )
            .order_by("-id")
            .values("id")[:max_turns]
        )
        .order_by("turn_id", "id")
        .values_list("role", "content", "pk")
    ),
    lambda connection, session_id, before_id: (
        before_id,
        _session_pk(connection, session_id),
        Turn.Status.COMPLETED.value,
    ),
)


def session_get(*, user: AbstractBaseUser, session_id) -> ChatSession:
    """Raises: Http404 for a session that is not the user's (or not a session id: ValidationError,
    as the ORM raises)."""
    found = _OWN_SESSION.instances(user.pk, session_id)
    if not found:
        raise Http404("No ChatSession matches the given query.")
    return found[0]


def session_messages(*, session: ChatSession) -> QuerySet[Message]:
    return session.messages.select_related("turn").order_by("created_at", "id")


def turn_get_by_request_id(
    *, user: AbstractBaseUser, client_request_id: str, visible: bool = False
) -> Turn | None:
    """The user's turn with this request id, or None.

    `visible=False` (the chat path) also finds turns of conversations the user deleted: a request
    id stays taken, so a retry replays instead of answering twice. `visible=True` (rating) finds
    only what the user can still see.
    """
    turns = Turn.objects.filter(user=user, client_request_id=client_request_id)
    if visible:
        turns = turns.filter(session__deleted_at__isnull=True)
    return turns.select_related("session").first()


def turn_reply(*, turn: Turn) -> Message | None:
    return turn.messages.filter(role=Message.Role.ASSISTANT).order_by("-id").first()


def history_for_llm(*, session: ChatSession, before: Turn, max_turns: int) -> list[ChatMessage]:
    """The last `max_turns` completed turns before `before`, oldest first (one query)."""
    if max_turns <= 0:
        return []
    messages = _HISTORY.rows(session.pk, before.id, max_turns=max_turns)
    return [
        ChatMessage(role=role, content=content, message_id=pk) for role, content, pk in messages
    ]


def trace_payloads(rows: Sequence[TraceExport]) -> list[dict]:
    """These rows' traces as MLflow is to get them: the messages they name filled in (one query),
    masked with TRACE_REDACT_PII, previews clipped, a sampled-out one asked for later tagged with
    why (see `tracing.complete_payload`)."""
    ids = set().union(*(tracing.message_refs(row.payload) for row in rows))
    texts = dict(Message.objects.filter(pk__in=ids).values_list("pk", "content")) if ids else {}
    return [
        tracing.complete_payload(row.payload, texts, written_late=row.written_late) for row in rows
    ]


def user_id_for(value: str) -> int | None:
    """A user's id from an id or a username; None when there is no such user."""
    users = get_user_model().objects
    by_name = users.filter(username=value).values_list("pk", flat=True).first()
    if by_name is not None or not (value.isascii() and value.isdecimal()):
        return by_name
    return users.filter(pk=int(value)).values_list("pk", flat=True).first()


def trace_search(
    *,
    user: str | None = None,
    user_id: int | None = None,
    session_id: str | None = None,
    client_request_id: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
    environment: str | None = None,
    app_version: str | None = None,
    feedback: Sequence[tuple[str, str]] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    order: str = "-time",
    cursor: str | None = None,
    page_size: int = 50,
) -> tracing.TracePage:
    """One page of traces matching every filter given; `user` is an id or a username.

    Raises: tracing.UnsafeFilterValue (a value that cannot be searched, or a cursor that is not
    ours), TracesUnavailable.
    """
    if user is not None:
        user_id = user_id_for(user)
        if user_id is None:
            return tracing.TracePage(traces=[], next_page_token=None)
    metadata = [
        (k, v) for k, v in (("environment", environment), ("app_version", app_version)) if v
    ]
    query = tracing.TraceQuery(
        user_id=user_id,
        session_id=str(session_id) if session_id else None,
        client_request_id=client_request_id,
        tags=tuple(tags),
        metadata=tuple(metadata),
        # MLflow stores booleans as 'true'/'false'.
        feedback=tuple(
            (k, v.lower() if v.lower() in ("true", "false") else v) for k, v in feedback
        ),
        since_ms=int(since.timestamp() * 1000) if since else None,
        until_ms=int(until.timestamp() * 1000) if until else None,
    )
    try:
        return tracing.search_traces(query, order=order, page_token=cursor, page_size=page_size)
    except tracing.TrackingUnavailable as exc:
        raise TracesUnavailable(
            "Trace search needs the MLflow tracking server, which did not answer; retry shortly."
        ) from exc


LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


def trace_recorded(*, otel_trace_id: int) -> bool:
    """Whether a turn already recorded a trace under this OpenTelemetry trace id."""
    return TraceExport.objects.filter(trace_id=tracing.new_trace_id(otel_trace_id)).exists()


def trace_backlog() -> dict:
    """Traces by delivery state (sampled out included), how many were repaired and written late,
    and the oldest one still waiting."""
    by_state = dict(
        TraceExport.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    # A sampled-out trace asked for later waits from when it was asked for, not from its turn.
    oldest = TraceExport.objects.filter(state=TraceExport.State.PENDING).aggregate(
        oldest=Min(Coalesce("requested_at", "created_at"))
    )["oldest"]
    late = dict(
        TraceExport.objects.exclude(written_late="")
        .values_list("written_late")
        .annotate(n=Count("id"))
        .values_list("written_late", "n")
    )
    return {
        "pending": by_state.get(TraceExport.State.PENDING, 0),
        "exported": by_state.get(TraceExport.State.EXPORTED, 0),
        "failed": by_state.get(TraceExport.State.FAILED, 0),
        "sampled_out": by_state.get(TraceExport.State.SAMPLED_OUT, 0),
        "repaired": TraceExport.objects.filter(repaired_at__isnull=False).count(),
        "written_late": {reason: late.get(reason, 0) for reason in TraceExport.LateReason.values},
        "oldest_pending_age_s": (timezone.now() - oldest).total_seconds() if oldest else 0.0,
    }


def trace_accounting(*, since: datetime | None = None) -> dict:
    """Answered turns by where their trace is; the parts add up to `answered` exactly.

    `answered` (completed turns) = `in_mlflow` + `pending` + `failed` (together: traced) +
    `sampled_out` + `untraced` (tracing was off) + `unaccounted` (a turn naming a trace whose row
    is gone: always 0 unless something deleted rows behind the app's back). `written_late`: traced
    turns whose trace was sampled out and asked for later (part of `in_mlflow` once written).
    """
    turns = Turn.objects.filter(status=Turn.Status.COMPLETED)
    if since is not None:
        turns = turns.filter(created_at__gte=since)
    answered = turns.count()
    untraced = turns.filter(trace_id="").count()
    # A turn's trace is the row its trace_id names (earlier failed attempts have rows of their own).
    rows = TraceExport.objects.filter(
        turn__status=Turn.Status.COMPLETED, turn__trace_id=F("trace_id")
    )
    if since is not None:
        rows = rows.filter(turn__created_at__gte=since)
    by_state = dict(rows.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    counts = {
        "in_mlflow": by_state.get(TraceExport.State.EXPORTED, 0),
        "pending": by_state.get(TraceExport.State.PENDING, 0),
        "failed": by_state.get(TraceExport.State.FAILED, 0),
        "sampled_out": by_state.get(TraceExport.State.SAMPLED_OUT, 0),
    }
    traced = counts["in_mlflow"] + counts["pending"] + counts["failed"]
    return {
        "answered": answered,
        "traced": traced,
        **counts,
        "untraced": untraced,
        "unaccounted": answered - traced - counts["sampled_out"] - untraced,
        "written_late": rows.exclude(written_late="").count(),
    }


def turn_stats() -> dict:
    """Turns by status, abandoned ones, and answer latency as cumulative bucket counts (ms)."""
    by_status = dict(
        Turn.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    answered = Turn.objects.filter(latency_ms__isnull=False)
    aggregates = answered.aggregate(
        count=Count("id"),
        total_ms=Sum("latency_ms"),
        **{f"le_{b}": Count("id", filter=Q(latency_ms__lte=b)) for b in LATENCY_BUCKETS_MS},
    )
    return {
        "by_status": by_status,
        "abandoned": Turn.objects.filter(error__startswith="Abandoned").count(),
        "latency_buckets": [(b, aggregates[f"le_{b}"]) for b in LATENCY_BUCKETS_MS],
        "latency_count": aggregates["count"],
        "latency_sum_ms": aggregates["total_ms"] or 0,
    }
