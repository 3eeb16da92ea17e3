"""Conversations and turns for staff. The feedback app extends the Turn admin with labelling."""

from django.contrib import admin

from chat import tracing
from chat.models import ChatSession, Message, Turn


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

    @admin.display(description="MLflow")
    def mlflow_link(self, obj: ChatSession):
        return tracing.ui_link_html(tracing.session_ui_url(obj.pk), "session traces")


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
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
    inlines = [MessageInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="Trace")
    def trace_link(self, obj: Turn):
        return tracing.trace_link_html(obj.trace_id)
