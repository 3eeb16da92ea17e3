"""Conversations and turns for staff. The feedback app extends the Turn admin with labelling."""

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Substr
from django.http import HttpRequest

from chat import delivery, tracing
from chat.models import ChatSession, Message, TraceExport, Turn

EXCERPT_CHARS = 90
ADMIN_WRITE_DEADLINE_S = 10.0


def _excerpt(role: str) -> Subquery:
    """The first characters of a turn's question or answer, in the list's one query."""
    return Subquery(
        Message.objects.filter(turn=OuterRef("pk"), role=role)
        .order_by("id")
        .values(text=Substr("content", 1, EXCERPT_CHARS + 1))[:1]
    )


def _clip(text: str | None) -> str:
    if not text:
        return "-"
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS].rstrip() + "…"


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "content", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "owner", "created_at", "updated_at", "deleted_at", "mlflow_link")
    list_filter = (
        "created_at",
        "updated_at",
        ("deleted_at", admin.EmptyFieldListFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("id", "title", "owner__username", "owner__email", "turns__client_request_id")
    list_select_related = ("owner",)
    readonly_fields = ("id", "owner", "created_at", "updated_at", "deleted_at", "mlflow_link")
    fields = ("id", "title", "owner", "created_at", "updated_at", "deleted_at", "mlflow_link")
    inlines = [MessageInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False  # conversations start from the chat page or the API

    @admin.display(description="MLflow")
    def mlflow_link(self, obj: ChatSession):
        return tracing.ui_link_html(tracing.session_ui_url(obj.pk), "session traces")


@admin.action(description="Write trace to MLflow (sampled-out ones too)", permissions=["view"])
def write_traces(modeladmin, request, queryset):
    """Trace this: the selected turns' traces in MLflow, tagged `trace.written_late=requested`."""
    result = delivery.traces_write(turns=queryset, deadline_s=ADMIN_WRITE_DEADLINE_S)
    text = (
        f"{result.turns} turn(s): {result.written} trace(s) in MLflow "
        f"({result.asked} sampled out, now asked for)"
    )
    if result.waiting:
        text += f", {result.waiting} queued for the delivery worker (MLflow busy or not reachable)"
    if result.failed:
        text += f", {result.failed} refused by MLflow (see Traces to MLflow)"
    if result.untraced:
        text += f"; {result.untraced} without a trace (tracing was off)"
    ok = not (result.waiting or result.failed)
    modeladmin.message_user(request, text + ".", messages.SUCCESS if ok else messages.WARNING)


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "question",
        "answer",
        "status",
        "latency_ms",
        "trace_link",
    )
    list_display_links = ("created_at",)
    list_filter = (
        "status",
        "created_at",
        "app_version",
        "environment",
        "model",
        ("user", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = (
        "client_request_id",
        "trace_id",
        "user__username",
        "session__title",
        "messages__content",
    )
    list_select_related = ("user",)
    ordering = ("-created_at", "-id")
    readonly_fields = [f.name for f in Turn._meta.fields] + ["trace_link"]
    inlines = [MessageInline]
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = [write_traces]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Turn]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                question_text=_excerpt(Message.Role.USER),
                answer_text=_excerpt(Message.Role.ASSISTANT),
                trace_state=Subquery(
                    TraceExport.objects.filter(trace_id=OuterRef("trace_id")).values("state")[:1]
                ),
            )
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # read-only: no Save buttons; labels are actions and the review queue

    @admin.display(description="Question")
    def question(self, obj: Turn) -> str:
        return _clip(obj.question_text)

    @admin.display(description="Answer")
    def answer(self, obj: Turn) -> str:
        return _clip(obj.answer_text)

    @admin.display(description="Trace")
    def trace_link(self, obj: Turn):
        if getattr(obj, "trace_state", None) == TraceExport.State.SAMPLED_OUT:
            return "sampled out"  # stored, not in MLflow: "Write trace to MLflow" writes it
        return tracing.trace_link_html(obj.trace_id)
