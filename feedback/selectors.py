"""Reads, scoped to the person asking: someone else's turn or feedback does not exist (404)."""

from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Avg, Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Mod, TruncDate
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils.module_loading import import_string

from chat import selectors as chat_selectors
from chat.delivery import due
from chat.models import Message, TraceExport, Turn
from feedback.models import Feedback, QueueItem, ReviewClaim


def turn_by_request_id(*, user: AbstractBaseUser, client_request_id: str) -> Turn:
    """The user's turn with this request id in a conversation they still see. Raises: Http404."""
    turn = chat_selectors.turn_get_by_request_id(
        user=user, client_request_id=client_request_id, visible=True
    )
    if turn is None:
        raise Http404("No turn with this client_request_id.")
    return turn


def turn_by_reply_message(*, user: AbstractBaseUser, message_id: int) -> Turn:
    """The turn whose answer is `message_id`, in one of the user's sessions. Raises: Http404."""
    message = get_object_or_404(
        Message.objects.select_related("turn"),
        pk=message_id,
        role=Message.Role.ASSISTANT,
        session__owner=user,
        session__deleted_at__isnull=True,
    )
    return message.turn


def feedback_get(*, user: AbstractBaseUser, turn: Turn) -> Feedback:
    """Raises: Http404 when the user has no (unwithdrawn) feedback on the turn."""
    return get_object_or_404(Feedback, user=user, turn=turn, withdrawn=False)


def feedback_of(*, user: AbstractBaseUser, turn: Turn) -> Feedback | None:
    """The user's live feedback on the turn, if any (staff labels keep their vote with it)."""
    return Feedback.objects.filter(user=user, turn=turn, withdrawn=False).first()


def deliverable(now: datetime) -> Q:
    """Due, free of any lease, and on a trace MLflow already has whole.

    Feedback waits (without spending attempts) while its turn's trace is still being delivered,
    so it is never marked delivered onto a half-written or missing trace; a sampled-out trace
    is asked for when the feedback is stored (`services.feedback_submit`) and waited for alike.
    """
    trace_waiting = TraceExport.objects.filter(trace_id=OuterRef("turn__trace_id")).exclude(
        state=TraceExport.State.EXPORTED
    )
    return due(now) & ~Exists(trace_waiting)


def feedback_due_ids(*, now: datetime, limit: int) -> list[int]:
    return list(
        feedback_pending()
        .filter(deliverable(now))
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )


def feedback_pending() -> QuerySet[Feedback]:
    return Feedback.objects.filter(delivery_state=Feedback.Delivery.PENDING)


REPORT_GROUPS = {
    "app_version": F("app_version"),
    "environment": F("environment"),
    "user": F("user__username"),
    "day": TruncDate("created_at"),
}


def feedback_report(
    *, group_by: str, since: datetime | None = None, until: datetime | None = None
) -> list[dict]:
    """Turn and feedback counts per group, from the ORM (fast, and the source of truth).

    Users' feedback (from the person who asked) and staff labels (feedback from anyone else, as
    the review queue counts them) are counted apart: a label is a judgement, not a user's vote.
    `not_in_mlflow` counts either kind that MLflow does not show yet (pending or failed delivery):
    where this report and MLflow disagree. `traced` + `sampled_out` = `turns` (with tracing on):
    every rate here counts every turn, whatever TRACE_SAMPLE_RATIO left out of MLflow.
    """
    turns = Turn.objects.filter(status=Turn.Status.COMPLETED)
    if since:
        turns = turns.filter(created_at__gte=since)
    if until:
        turns = turns.filter(created_at__lt=until)
    live = Q(feedback__withdrawn=False)
    vote = Q(feedback__is_correct__isnull=False) | Q(feedback__rating__isnull=False)
    good = Q(feedback__is_correct=True) | Q(feedback__rating__gte=4)
    corrected = ~Q(feedback__expected_response="")
    own = live & Q(feedback__user_id=F("user_id"))
    label = live & ~Q(feedback__user_id=F("user_id"))
    # The turn's trace row (its trace_id names it): one lookup, not a join that would multiply
    # the feedback counts.
    trace_row = TraceExport.objects.filter(trace_id=OuterRef("trace_id"))
    sampled_out = Q(Exists(trace_row.filter(state=TraceExport.State.SAMPLED_OUT)))
    traced = Q(Exists(trace_row.exclude(state=TraceExport.State.SAMPLED_OUT)))
    rows = (
        turns.annotate(group=REPORT_GROUPS[group_by])
        .values("group")
        .annotate(
            turns=Count("id", distinct=True),
            traced=Count("id", filter=traced, distinct=True),
            sampled_out=Count("id", filter=sampled_out, distinct=True),
            rated_turns=Count("id", filter=own, distinct=True),
            feedback_count=Count("feedback", filter=own),
            judged=Count("feedback", filter=own & vote),
            positive=Count("feedback", filter=own & good),
            mean_rating=Avg("feedback__rating", filter=own),
            corrections=Count("feedback", filter=own & corrected),
            labelled_turns=Count("id", filter=label, distinct=True),
            labels=Count("feedback", filter=label),
            labels_judged=Count("feedback", filter=label & vote),
            labels_positive=Count("feedback", filter=label & good),
            label_corrections=Count("feedback", filter=label & corrected),
            not_in_mlflow=Count(
                "feedback",
                filter=Q(feedback__isnull=False)
                & ~Q(feedback__delivery_state=Feedback.Delivery.DELIVERED),
            ),
        )
        .order_by("group")
    )
    report = []
    for row in rows:
        row["feedback"] = row.pop("feedback_count")  # "feedback" is the relation in the query
        row["feedback_rate"] = round(row["rated_turns"] / row["turns"], 4) if row["turns"] else 0
        row["positive_rate"] = _rate(row["positive"], row["judged"])
        row["label_positive_rate"] = _rate(row["labels_positive"], row["labels_judged"])
        if row["mean_rating"] is not None:
            row["mean_rating"] = round(row["mean_rating"], 2)
        row["group"] = str(row["group"]) if row["group"] not in (None, "") else "(none)"
        report.append(row)
    return report


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def corrected_trace_ids(*, since: datetime | None = None, turn_ids=None) -> tuple[list[str], int]:
    """Trace ids of turns with a corrected answer already in MLflow, and how many still are not."""
    corrected = Feedback.objects.filter(withdrawn=False).exclude(expected_response="")
    if since:
        corrected = corrected.filter(turn__created_at__gte=since)
    if turn_ids is not None:
        corrected = corrected.filter(turn_id__in=list(turn_ids))
    delivered = (
        corrected.filter(delivery_state=Feedback.Delivery.DELIVERED)
        .exclude(turn__trace_id="")
        .order_by("turn_id")
        .values_list("turn__trace_id", flat=True)
        .distinct()
    )
    waiting = corrected.exclude(delivery_state=Feedback.Delivery.DELIVERED).count()
    return list(delivered), waiting


def feedback_by_turn(*, user: AbstractBaseUser, session) -> dict[int, Feedback]:
    """The user's live feedback on each turn of a session, by turn id (one query)."""
    rows = Feedback.objects.filter(user=user, turn__session=session, withdrawn=False)
    return {f.turn_id: f for f in rows}


def feedback_backlog() -> dict:
    """Feedback by delivery state."""
    by_state = dict(
        Feedback.objects.values_list("delivery_state")
        .annotate(n=Count("id"))
        .values_list("delivery_state", "n")
    )
    return {state: by_state.get(state, 0) for state in Feedback.Delivery.values}


# --- The review queue --------------------------------------------------------------------------

REVIEW_SIGNALS = {
    "disliked": "Thumbs down or rated 1-2",
    "thumbs_down": "Thumbs down",
    "low_rating": "Rated 1-2",
    "commented": "With a user comment",
    "queued": "Queued by rules (open)",
    "any": "Every answered turn",
}
REVIEW_ORDERS = {"newest": "Newest first", "worst": "Worst first", "queued": "Queued first"}
OPEN_ITEM = [QueueItem.State.NEW, QueueItem.State.IN_REVIEW]


@dataclass(frozen=True)
class ReviewFilter:
    signal: str = "disliked"
    unlabelled: bool = True
    app_version: str = ""
    environment: str = ""
    since: date | None = None
    order: str = "newest"


def _owners_feedback() -> QuerySet[Feedback]:
    return Feedback.objects.filter(turn=OuterRef("pk"), user=OuterRef("user_id"), withdrawn=False)


def _labelled() -> Exists:
    """Someone other than the turn's owner (staff) has labelled it."""
    return Exists(
        Feedback.objects.filter(turn=OuterRef("pk"), withdrawn=False).exclude(
            user=OuterRef("user_id")
        )
    )


def review_matching(*, filters: ReviewFilter) -> QuerySet[Turn]:
    """Answered turns matching the filters, labelled or not, in review order."""
    own = _owners_feedback()
    signals = {
        "disliked": Exists(own.filter(Q(is_correct=False) | Q(rating__lte=2))),
        "thumbs_down": Exists(own.filter(is_correct=False)),
        "low_rating": Exists(own.filter(rating__lte=2)),
        "commented": Exists(own.exclude(comment="")),
        "queued": Exists(QueueItem.objects.filter(turn=OuterRef("pk"), state__in=OPEN_ITEM)),
    }
    turns = Turn.objects.filter(
        status=Turn.Status.COMPLETED, session__deleted_at__isnull=True
    ).annotate(
        owner_rating=Subquery(own.values("rating")[:1]),
        owner_is_correct=Subquery(own.values("is_correct")[:1]),
        queued_at=Subquery(
            QueueItem.objects.filter(turn=OuterRef("pk"), state__in=OPEN_ITEM).values("created_at")[
                :1
            ]
        ),
    )
    if filters.signal in signals:
        turns = turns.filter(signals[filters.signal])
    if filters.app_version:
        turns = turns.filter(app_version=filters.app_version)
    if filters.environment:
        turns = turns.filter(environment=filters.environment)
    if filters.since:
        turns = turns.filter(created_at__date__gte=filters.since)
    if filters.order == "worst":
        # Thumbs down and the lowest ratings first, then the newest.
        return turns.order_by(
            F("owner_is_correct").asc(nulls_last=True),
            F("owner_rating").asc(nulls_last=True),
            "-created_at",
            "-id",
        )
    if filters.order == "queued":
        # What rules (or staff) put in the queue, oldest item first, then the newest turns.
        return turns.order_by(F("queued_at").asc(nulls_last=True), "-created_at", "-id")
    return turns.order_by("-created_at", "-id")


def review_queue(*, filters: ReviewFilter, reviewer: AbstractBaseUser, now: datetime):
    """What `reviewer` may be shown next: matching, needing their label (unless asked), not
    held by anyone else."""
    turns = review_matching(filters=filters)
    if filters.unlabelled:
        turns = _needing_label_from(turns, reviewer)
    return turns.filter(~Exists(_held_by_others(reviewer, now)))


def _held_by_others(reviewer: AbstractBaseUser, now: datetime) -> QuerySet[ReviewClaim]:
    return ReviewClaim.objects.filter(turn=OuterRef("pk"), expires_at__gt=now).exclude(
        reviewer=reviewer
    )


def _count(feedback: QuerySet[Feedback]) -> Coalesce:
    per_turn = feedback.order_by().values("turn").annotate(n=Count("pk")).values("n")[:1]
    return Coalesce(Subquery(per_turn), 0)


def _needing_label_from(turns: QuerySet[Turn], reviewer: AbstractBaseUser) -> QuerySet[Turn]:
    """Turns `reviewer` has not judged that still need a staff label: nobody's yet; a second
    (blind) one for the REVIEW_DOUBLE_SHARE of turns picked by id; a third where two disagree."""
    labels = Feedback.objects.filter(turn=OuterRef("pk"), withdrawn=False).exclude(
        user=OuterRef("user_id")
    )
    double_percent = round(settings.REVIEW_DOUBLE_SHARE * 100)
    return turns.annotate(
        staff_labels=_count(labels),
        staff_correct=_count(labels.filter(is_correct=True)),
        staff_wrong=_count(labels.filter(is_correct=False)),
        id_percentile=Mod("id", 100),
    ).filter(
        ~Exists(Feedback.objects.filter(turn=OuterRef("pk"), user=reviewer, withdrawn=False)),
        Q(staff_labels=0)
        | Q(staff_labels=1, id_percentile__lt=double_percent)
        | Q(staff_labels=2, staff_correct__gte=1, staff_wrong__gte=1),
    )


def gold_queue(*, reviewer: AbstractBaseUser, now: datetime) -> QuerySet[Turn]:
    """Gold items `reviewer` has not labelled, not held by anyone else, oldest first."""
    return (
        Turn.objects.filter(gold_item__isnull=False)
        .exclude(feedback__user=reviewer, feedback__withdrawn=False)
        .filter(~Exists(_held_by_others(reviewer, now)))
        .order_by("gold_item__created_at", "id")
    )


def gold_due(*, reviewer: AbstractBaseUser) -> bool:
    """Whether the next turn shown to `reviewer` is a gold item: every REVIEW_GOLD_EVERY-th."""
    every = settings.REVIEW_GOLD_EVERY
    if not every:
        return False
    given = Feedback.objects.filter(user=reviewer, withdrawn=False).exclude(turn__user=reviewer)
    return (given.count() + 1) % every == 0


def review_progress(*, filters: ReviewFilter) -> tuple[int, int]:
    """(labelled, matching) for the filters, whoever labelled them."""
    counts = (
        review_matching(filters=filters)
        .order_by()
        .aggregate(total=Count("pk"), labelled=Count("pk", filter=Q(_labelled())))
    )
    return counts["labelled"], counts["total"]


def review_context(*, turn: Turn, history: int = 10) -> dict:
    """The conversation up to `turn`, its question and answer, and the owner's feedback."""
    messages = list(
        Message.objects.filter(session_id=turn.session_id, turn__created_at__lte=turn.created_at)
        .exclude(turn__status__in=[Turn.Status.FAILED])
        .select_related("turn")
        .order_by("-created_at", "-id")[: history * 2 + 2]
    )[::-1]
    earlier = [m for m in messages if m.turn_id != turn.pk]
    mine = [m for m in messages if m.turn_id == turn.pk]
    return {
        "history": earlier,
        "question": next((m for m in mine if m.role == Message.Role.USER), None),
        "answer": next((m for m in mine if m.role == Message.Role.ASSISTANT), None),
        "owner_feedback": feedback_of(user=turn.user, turn=turn),
        "queue_item": QueueItem.objects.filter(turn=turn).first(),
    }


def turn_lifecycles(*, turn_ids) -> dict:
    """{turn id: lifecycle} (`.label`, `.stage`) from the app named by TURN_LIFECYCLES (the
    datasets and evaluations live above feedback, so it is wired by settings); {} when unset."""
    if not settings.TURN_LIFECYCLES:
        return {}
    return import_string(settings.TURN_LIFECYCLES)(turn_ids=list(turn_ids))


def lifecycle_counts() -> dict[str, int]:
    """How many turns that entered the review queue stand at each lifecycle stage."""
    queued = QueueItem.objects.values_list("turn_id", flat=True)
    counts: dict[str, int] = {}
    for lifecycle in turn_lifecycles(turn_ids=queued).values():
        counts[lifecycle.stage] = counts.get(lifecycle.stage, 0) + 1
    return counts
