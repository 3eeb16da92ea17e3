"""Staff labelling: actions on turns, and feedback with its delivery state.

The Turn admin is chat's; this app re-registers it with the feedback inline and the label
actions, so chat never depends on feedback.
"""

from collections import Counter

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Prefetch, QuerySet, Subquery
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from chat import tracing
from chat.admin import TurnAdmin
from chat.models import Message, Turn
from feedback import agreement, selectors, services
from feedback.exceptions import TurnNotRateable
from feedback.forms import ExpectedResponseForm
from feedback.models import Feedback, GoldItem
from feedback.review import review_page

ADMIN_DELIVERY_DEADLINE_S = 10.0


def _report(modeladmin, request, verb: str, stored: int, refused: int, counts: Counter) -> None:
    delivered = counts[Feedback.Delivery.DELIVERED]
    not_yet = stored - delivered
    level = messages.SUCCESS if not refused and not not_yet else messages.WARNING
    text = f"{verb} {stored} turn(s): {delivered} delivered to MLflow"
    if not_yet:
        text += (
            f", {not_yet} queued for the delivery worker "
            "(MLflow not reachable or the trace not exported yet)"
        )
    if refused:
        text += f"; {refused} skipped (no completed answer with a trace)"
    modeladmin.message_user(request, text + ".", level)


def _label(modeladmin, request, turns: QuerySet[Turn], verb: str, fields_for) -> None:
    """Store the staff member's feedback on each turn, then try to deliver it right away."""
    stored, refused = [], 0
    for turn in turns:
        try:
            feedback, _ = services.feedback_submit(user=request.user, turn=turn, **fields_for(turn))
        except TurnNotRateable:
            refused += 1
            continue
        stored.append(feedback.pk)
    counts = services.feedback_deliver_many(
        feedback_ids=stored, deadline_s=ADMIN_DELIVERY_DEADLINE_S
    )
    _report(modeladmin, request, verb, len(stored), refused, counts)


@admin.action(description="Mark response correct", permissions=["label"])
def mark_correct(modeladmin, request, queryset):
    _label(modeladmin, request, queryset, "Marked correct", lambda turn: {"is_correct": True})


@admin.action(description="Mark response incorrect", permissions=["label"])
def mark_incorrect(modeladmin, request, queryset):
    _label(modeladmin, request, queryset, "Marked incorrect", lambda turn: {"is_correct": False})


@admin.action(description="Set expected response…", permissions=["label"])
def set_expected_response(modeladmin, request, queryset):
    if "apply" in request.POST:
        form = ExpectedResponseForm(request.POST)
        if form.is_valid():
            _label_expectation(
                modeladmin, request, queryset, form.cleaned_data["expected_response"]
            )
            return None
    else:
        form = ExpectedResponseForm(selected=queryset.values_list("pk", flat=True))
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Set the expected response",
        "form": form,
        "turns": queryset.select_related("user", "session").prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("id"))
        ),
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/feedback/set_expected_response.html", context)


def _label_expectation(modeladmin, request, turns, expected: str) -> None:
    def keep_vote_and_set_expectation(turn: Turn) -> dict:
        earlier = selectors.feedback_of(user=request.user, turn=turn)
        vote = (
            {"is_correct": earlier.is_correct, "rating": earlier.rating, "comment": earlier.comment}
            if earlier
            else {}
        )
        return {**vote, "expected_response": expected}

    _label(
        modeladmin, request, turns, "Set the expected response on", keep_vote_and_set_expectation
    )


class FeedbackInline(admin.TabularInline):
    model = Feedback
    fields = ("user", "is_correct", "rating", "comment", "expected_response", "delivery_state")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.action(description="Retry delivery to MLflow", permissions=["change"])
def retry_delivery(modeladmin, request, queryset):
    ids = []
    for feedback in queryset.exclude(delivery_state=Feedback.Delivery.DELIVERED):
        services.feedback_retry(feedback=feedback)
        ids.append(feedback.pk)
    counts = services.feedback_deliver_many(feedback_ids=ids, deadline_s=ADMIN_DELIVERY_DEADLINE_S)
    delivered = counts[Feedback.Delivery.DELIVERED]
    failed = len(ids) - delivered
    modeladmin.message_user(
        request,
        f"Retried {len(ids)} feedback: {delivered} delivered, {failed} not delivered "
        "(still pending or failed; see Last error).",
        messages.SUCCESS if not failed else messages.WARNING,
    )


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "turn_link",
        "user",
        "is_correct",
        "rating",
        "has_expected_response",
        "withdrawn",
        "delivery_state",
        "attempts",
        "updated_at",
    )
    list_filter = ("delivery_state", "is_correct", "rating", "withdrawn", "updated_at")
    search_fields = (
        "user__username",
        "turn__client_request_id",
        "turn__trace_id",
        "comment",
        "expected_response",
    )
    list_select_related = ("user", "turn")
    readonly_fields = [f.name for f in Feedback._meta.fields] + ["trace_link"]
    actions = [retry_delivery]
    date_hierarchy = "updated_at"

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="Turn")
    def turn_link(self, obj: Feedback):
        url = reverse("admin:chat_turn_change", args=[obj.turn_id])
        return format_html('<a href="{}">{}</a>', url, obj.turn.client_request_id)

    @admin.display(description="Expected response", boolean=True)
    def has_expected_response(self, obj: Feedback) -> bool:
        return bool(obj.expected_response)

    @admin.display(description="Trace in MLflow")
    def trace_link(self, obj: Feedback):
        return tracing.trace_link_html(obj.turn.trace_id)

    # Deleting (one or in bulk) goes through the service, so no assessment outlives its row.
    def delete_model(self, request, obj: Feedback) -> None:
        try:
            services.feedback_delete(feedback=obj)
        except tracing.TrackingUnavailable as exc:
            request._feedback_not_deleted = 1
            self.message_user(
                request, f"Not deleted: MLflow did not answer ({exc}); try again.", messages.ERROR
            )

    def delete_queryset(self, request, queryset) -> None:
        failed = 0
        for feedback in queryset:
            try:
                services.feedback_delete(feedback=feedback)
            except tracing.TrackingUnavailable:
                failed += 1
        if failed:
            request._feedback_not_deleted = failed
            self.message_user(
                request,
                f"{failed} feedback not deleted: MLflow did not answer; try again.",
                messages.ERROR,
            )

    def response_delete(self, request, obj_display, obj_id):
        if getattr(request, "_feedback_not_deleted", 0):
            return HttpResponseRedirect(reverse("admin:feedback_feedback_changelist"))
        return super().response_delete(request, obj_display, obj_id)


@admin.action(description="Export corrected turns to the evaluation dataset", permissions=["label"])
def export_to_eval_dataset(modeladmin, request, queryset):
    name = settings.EVAL_DATASET_NAME
    try:
        result = services.eval_dataset_export(
            name=name, turn_ids=queryset.values_list("pk", flat=True)
        )
    except tracing.TrackingUnavailable as exc:
        modeladmin.message_user(
            request, f"MLflow did not answer; nothing exported ({exc}).", messages.ERROR
        )
        return
    text = (
        f"Evaluation dataset {name!r}: {result.traces} corrected trace(s) merged, "
        f"{result.records} record(s) in the dataset."
    )
    if result.waiting:
        text += f" {result.waiting} correction(s) not in MLflow yet were skipped."
    skipped = queryset.count() - result.traces - result.waiting
    if skipped > 0:
        text += f" {skipped} selected turn(s) have no corrected answer."
    modeladmin.message_user(request, text, messages.SUCCESS)


class LifecycleChangeList(ChangeList):
    """The page's lifecycles in a few queries for all its turns, not a few per row."""

    def get_results(self, request):
        super().get_results(request)
        found = selectors.turn_lifecycles(turn_ids=[turn.pk for turn in self.result_list])
        for turn in self.result_list:
            turn._lifecycle = found.get(turn.pk)


admin.site.unregister(Turn)


@admin.register(Turn)
class LabelledTurnAdmin(TurnAdmin):
    """Chat's Turn admin with everyone's feedback inline and the staff label actions."""

    inlines = [*TurnAdmin.inlines, FeedbackInline]
    actions = [
        *TurnAdmin.actions,
        mark_correct,
        mark_incorrect,
        set_expected_response,
        export_to_eval_dataset,
    ]
    list_display = (
        *TurnAdmin.list_display[:4],
        "user_feedback",
        "lifecycle",
        *TurnAdmin.list_display[4:],
    )

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "lifecycle"]

    def get_changelist(self, request, **kwargs):
        return LifecycleChangeList

    @admin.display(description="Lifecycle")
    def lifecycle(self, obj: Turn) -> str:
        if not hasattr(obj, "_lifecycle"):  # the change page: one turn
            obj._lifecycle = selectors.turn_lifecycles(turn_ids=[obj.pk]).get(obj.pk)
        return obj._lifecycle.label if obj._lifecycle is not None else "-"

    def get_queryset(self, request):
        own = Feedback.objects.filter(
            turn=OuterRef("pk"), user=OuterRef("user_id"), withdrawn=False
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                fb_is_correct=Subquery(own.values("is_correct")[:1]),
                fb_rating=Subquery(own.values("rating")[:1]),
                fb_comment=Subquery(own.values("comment")[:1]),
            )
        )

    @admin.display(description="User's feedback")
    def user_feedback(self, obj: Turn) -> str:
        parts = []
        if obj.fb_is_correct is not None:
            parts.append("good" if obj.fb_is_correct else "bad")
        if obj.fb_rating is not None:
            parts.append(f"{obj.fb_rating}/5")
        if obj.fb_comment:
            comment = obj.fb_comment
            parts.append(f"“{comment[:60]}…”" if len(comment) > 60 else f"“{comment}”")
        return " · ".join(parts) or "-"

    def get_urls(self):
        review = self.admin_site.admin_view(lambda request: review_page(self, request))
        report = self.admin_site.admin_view(lambda request: self.agreement_view(request))
        return [
            path("review/", review, name="chat_turn_review"),
            path("agreement/", report, name="chat_turn_agreement"),
            *super().get_urls(),
        ]

    def agreement_view(self, request):
        if not self.has_label_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Reviewer agreement",
            "opts": self.model._meta,
            "report": agreement.agreement_report(),
            "low_kappa": settings.REVIEW_LOW_KAPPA,
        }
        return TemplateResponse(request, "admin/feedback/agreement.html", context)

    def has_label_permission(self, request) -> bool:
        return request.user.has_perm("feedback.add_feedback") and request.user.has_perm(
            "feedback.change_feedback"
        )


@admin.register(GoldItem)
class GoldItemAdmin(admin.ModelAdmin):
    """Turns whose right label is known: mixed into the review queue, checked in the report."""

    list_display = ("turn", "is_correct", "note", "created_by", "created_at")
    list_filter = ("is_correct", "created_at")
    search_fields = ("turn__client_request_id", "turn__trace_id", "note")
    raw_id_fields = ("turn",)
    readonly_fields = ("created_by", "created_at")

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
