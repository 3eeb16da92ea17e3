from django.contrib import admin

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
    list_display = ("__str__", "owner", "created_at", "updated_at")
    list_filter = ("created_at", "owner")
    search_fields = ("id", "title", "owner__username", "turns__client_request_id")
    readonly_fields = ("id", "owner", "created_at", "updated_at")
    inlines = [MessageInline]
    date_hierarchy = "created_at"


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "session", "client_request_id", "status", "model", "latency_ms")
    list_filter = ("status", "model", "created_at")
    search_fields = ("client_request_id", "trace_id", "user__username", "session__title")
    list_select_related = ("user", "session")
    readonly_fields = [f.name for f in Turn._meta.fields]
    inlines = [MessageInline]
