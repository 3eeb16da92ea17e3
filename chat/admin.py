from django.contrib import admin
from django.utils.html import format_html

from chat import tracing
from chat.models import ChatSession, Message, Turn
from feedback.admin import (
    FeedbackInline,
    LabelPermissionMixin,
    export_to_eval_dataset,
    mark_correct,
    mark_incorrect,
    set_expected_response,
)


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "content", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _link(url: str | None, text: str):
    return format_html('<a href="{}" target="_blank">{}</a>', url, text) if url else "-"


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

    @admin.display(description="MLflow")
    def mlflow_link(self, obj: ChatSession):
        return _link(tracing.session_ui_url(obj.pk), "session traces")


@admin.register(Turn)
class TurnAdmin(LabelPermissionMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "session",
        "client_request_id",
        "status",
        "model",
        "total_tokens",
        "latency_ms",
        "created_at",
        "trace_link",
    )
    list_filter = ("status", "model", "created_at", ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("client_request_id", "trace_id", "user__username", "session__title")
    list_select_related = ("user", "session")
    readonly_fields = [f.name for f in Turn._meta.fields] + ["trace_link"]
    inlines = [MessageInline, FeedbackInline]
    actions = [mark_correct, mark_incorrect, set_expected_response, export_to_eval_dataset]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="Trace")
    def trace_link(self, obj: Turn):
        return _link(tracing.trace_ui_url(obj.trace_id), obj.trace_id or "-")
