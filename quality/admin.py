"""Rules and alerts in the admin; matches, alert events and webhook deliveries read-only.

Rules decide what reviewers see and what leaves the building (datasets, webhooks), so changing
them takes the `quality.manage_rules` permission; staff with `view_rule` may look.
"""

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from quality import services, webhooks
from quality.models import Alert, AlertEvent, Rule, RuleMatch, WebhookDelivery

APPLY_DEADLINE_S = 20.0
MANAGE = "quality.manage_rules"


@admin.action(description="Apply to past turns", permissions=["manage"])
def apply_to_past_turns(modeladmin, request, queryset):
    for rule in queryset:
        counts, finished = services.rule_apply(rule=rule, deadline_s=APPLY_DEADLINE_S)
        text = (
            f"Rule {rule.name!r}: {counts['matched']} past turn(s) acted on, "
            f"{counts['sampled_out']} left out by sampling"
        )
        if finished:
            modeladmin.message_user(request, text + ".", messages.SUCCESS)
        else:
            modeladmin.message_user(
                request,
                text + f"; more remain: run `manage.py rules apply --rule '{rule.name}'` "
                "(or this action again) to go on.",
                messages.WARNING,
            )


class RuleMatchInline(admin.TabularInline):
    model = RuleMatch
    fields = ("turn", "matched_at", "backfill", "queued", "staged", "delivery")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ["-matched_at"]
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("turn", "delivery")


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "enabled",
        "filter_summary",
        "sample_rate",
        "action_summary",
        "match_count",
        "updated_at",
    )
    list_filter = ("enabled",)
    search_fields = ("name", "description")
    actions = [apply_to_past_turns]
    readonly_fields = ("created_at", "updated_at", "created_by")
    fieldsets = [
        (None, {"fields": ("name", "enabled", "description")}),
        (
            "Which turns",
            {
                "fields": (
                    "thumbs_down",
                    "max_rating",
                    "has_comment",
                    "has_correction",
                    "failed_turns",
                    "model",
                    "app_version",
                    "environment",
                    "sample_rate",
                ),
                "description": "Every condition set must hold (thumbs down and the rating: "
                "either one). New votes are matched by the feedback worker within seconds; "
                "use “Apply to past turns” for what came before.",
            },
        ),
        ("What to do", {"fields": ("enqueue", "dataset_name", "webhook_url", "webhook_secret")}),
        ("History", {"fields": ("created_at", "updated_at", "created_by")}),
    ]
    inlines = [RuleMatchInline]

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(MANAGE)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_manage_permission(request)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return self.has_manage_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return self.has_manage_permission(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return self.has_manage_permission(request) or request.user.has_perm("quality.view_rule")

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if self.has_manage_permission(request):
            return fieldsets
        # Viewers never see the signing key.
        return [
            (name, {**opts, "fields": tuple(f for f in opts["fields"] if f != "webhook_secret")})
            for name, opts in fieldsets
        ]

    def save_model(self, request, obj: Rule, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(n_matches=Count("matches"))

    @admin.display(description="Matched", ordering="n_matches")
    def match_count(self, obj: Rule) -> int:
        return obj.n_matches

    @admin.display(description="Filter")
    def filter_summary(self, obj: Rule) -> str:
        parts = []
        if obj.failed_turns:
            parts.append("failed")
        votes = []
        if obj.thumbs_down:
            votes.append("thumbs down")
        if obj.max_rating:
            votes.append(f"rating ≤ {obj.max_rating}")
        if votes:
            parts.append(" or ".join(votes))
        if obj.has_comment:
            parts.append("commented")
        if obj.has_correction:
            parts.append("corrected")
        for field in ("model", "app_version", "environment"):
            if value := getattr(obj, field):
                parts.append(f"{field}={value}")
        return " · ".join(parts) or "every answered turn"

    @admin.display(description="Actions")
    def action_summary(self, obj: Rule) -> str:
        parts = []
        if obj.enqueue:
            parts.append("queue")
        if obj.dataset_name:
            parts.append(f"dataset {obj.dataset_name}")
        if obj.webhook_url:
            parts.append("webhook")
        return ", ".join(parts) or "-"


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RuleMatch)
class RuleMatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "rule", "turn_link", "matched_at", "backfill", "queued", "staged")
    list_filter = ("rule", "backfill", "matched_at")
    list_select_related = ("rule", "turn")
    search_fields = ("rule__name", "turn__client_request_id", "turn__trace_id")
    date_hierarchy = "matched_at"

    @admin.display(description="Turn")
    def turn_link(self, obj: RuleMatch):
        url = reverse("admin:chat_turn_change", args=[obj.turn_id])
        return format_html('<a href="{}">{}</a>', url, obj.turn_id)


@admin.action(description="Send again now", permissions=["retry"])
def retry_webhooks(modeladmin, request, queryset):
    n = 0
    for delivery in queryset.exclude(state=WebhookDelivery.State.DELIVERED):
        webhooks.webhook_retry(delivery=delivery)
        n += 1
    modeladmin.message_user(request, f"{n} delivery(ies) queued; the feedback worker sends them.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "source",
        "url",
        "state",
        "attempts",
        "last_status_code",
        "last_error_short",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    )
    list_filter = ("state", "rule", "alert", "created_at")
    list_select_related = ("rule", "alert")
    search_fields = ("url", "body")
    readonly_fields = [
        f.name for f in WebhookDelivery._meta.fields if f.name not in ("leased_until",)
    ]
    actions = [retry_webhooks]

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm(MANAGE)

    @admin.display(description="From")
    def source(self, obj: WebhookDelivery) -> str:
        return f"rule {obj.rule}" if obj.rule_id else f"alert {obj.alert}"

    @admin.display(description="Last error")
    def last_error_short(self, obj: WebhookDelivery) -> str:
        return obj.last_error[:80] or "-"


class AlertEventInline(admin.TabularInline):
    model = AlertEvent
    fields = ("created_at", "state", "value", "samples", "message", "delivery")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "enabled",
        "metric",
        "model",
        "window_minutes",
        "threshold",
        "state",
        "last_value",
        "last_samples",
        "last_evaluated_at",
        "changed_at",
    )
    list_filter = ("state", "metric", "enabled")
    readonly_fields = ("state", "last_value", "last_samples", "last_evaluated_at", "changed_at")
    inlines = [AlertEventInline]
    fieldsets = [
        (
            None,
            {
                "fields": (
                    "name",
                    "enabled",
                    "metric",
                    "model",
                    "window_minutes",
                    "threshold",
                    "min_samples",
                )
            },
        ),
        ("Notify", {"fields": ("webhook_url", "webhook_secret")}),
        (
            "Now (evaluated by the feedback worker every QUALITY_ALERT_INTERVAL_S)",
            {"fields": ("state", "last_value", "last_samples", "last_evaluated_at", "changed_at")},
        ),
    ]


@admin.register(AlertEvent)
class AlertEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "alert", "state", "value", "samples", "message")
    list_filter = ("state", "alert", "created_at")
    list_select_related = ("alert",)
