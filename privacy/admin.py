"""Erasure in the admin: deleting a user (one or in bulk) erases them, an explicit "Erase" action,
and the erasure records, read-only, with an action that finishes those still pending MLflow.

The User admin is Django's; this app re-registers it, as `UserAdmin` is usually extended.
"""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from privacy import services
from privacy.models import Erasure, RetentionPass

User = get_user_model()


def _erase(modeladmin, request, users) -> None:
    done, pending, skipped = 0, 0, 0
    traces = rows = 0
    for user in users:
        if user.pk == request.user.pk:
            skipped += 1  # erasing yourself signs you out mid-action: use DELETE /api/me/
            continue
        erasure = services.user_erase(user=user, via=Erasure.Via.ADMIN, requested_by=request.user)
        erasure = services.erasure_finish(erasure=erasure)
        rows += sum(erasure.rows_removed.values())
        traces += erasure.traces_removed
        if erasure.state == Erasure.State.COMPLETED:
            done += 1
        else:
            pending += 1
    text = (
        f"Erased {done + pending} user(s): {rows} database row(s) and {traces} MLflow trace(s) "
        f"removed; {done} verified through MLflow search"
    )
    if pending:
        text += (
            f", {pending} still pending MLflow (see Erasures; `manage.py erase_user --pending` "
            "finishes them)"
        )
    if skipped:
        text += "; your own account was skipped"
    level = messages.SUCCESS if not pending and not skipped else messages.WARNING
    modeladmin.message_user(request, text + ".", level)


@admin.action(description="Erase selected users (database and MLflow)", permissions=["delete"])
def erase_users(modeladmin, request, queryset):
    _erase(modeladmin, request, queryset)


admin.site.unregister(User)


@admin.register(User)
class ErasingUserAdmin(UserAdmin):
    """Django's User admin, where every way of deleting a user is an erasure."""

    actions = [erase_users]

    def delete_model(self, request, obj) -> None:
        erasure = services.user_erase(user=obj, via=Erasure.Via.ADMIN, requested_by=request.user)
        services.erasure_finish(erasure=erasure)

    def delete_queryset(self, request, queryset) -> None:
        for user in queryset:
            self.delete_model(request, user)


@admin.action(description="Finish in MLflow and verify", permissions=["finish"])
def finish_erasures(modeladmin, request, queryset):
    finished = [
        services.erasure_finish(erasure=erasure)
        for erasure in queryset.filter(state=Erasure.State.PENDING_MLFLOW)
    ]
    completed = sum(e.state == Erasure.State.COMPLETED for e in finished)
    modeladmin.message_user(
        request,
        f"{completed} of {len(finished)} pending erasure(s) completed and verified.",
        messages.SUCCESS if completed == len(finished) else messages.WARNING,
    )


@admin.register(Erasure)
class ErasureAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "requested_at",
        "subject_user_id",
        "via",
        "requested_by_id",
        "state",
        "traces_removed",
        "assessments_removed",
        "remaining_traces",
        "completed_at",
    )
    list_filter = ("state", "via", "requested_at")
    search_fields = ("=subject_user_id",)
    readonly_fields = [f.name for f in Erasure._meta.fields]
    actions = [finish_erasures]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # read-only; finishing one is an action

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the record is the proof that an erasure happened

    def has_finish_permission(self, request) -> bool:
        return request.user.has_perm("privacy.change_erasure")


@admin.register(RetentionPass)
class RetentionPassAdmin(admin.ModelAdmin):
    """Read-only: what each pass removed (counted) and what its check found."""

    list_display = ("id", "started_at", "via", "state", "removed", "remaining", "finished_at")
    list_filter = ("state", "via", "started_at")
    readonly_fields = [f.name for f in RetentionPass._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
