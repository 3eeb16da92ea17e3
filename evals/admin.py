"""Datasets in the admin: versions and records read-only, tags moved through the service, a diff
page, freezing the next version as an action; evaluation runs and results read-only; and
"Add to dataset…" on turns (attached to whichever Turn admin is registered, as feedback's is).
"""

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from chat.models import Turn
from evals import selectors, services
from evals.exceptions import EvalsError
from evals.forms import AddToDatasetForm
from evals.models import (
    Dataset,
    DatasetRecord,
    DatasetStage,
    DatasetTag,
    DatasetVersion,
    EvaluationResult,
    EvaluationRun,
)


class ReadOnly:
    """Frozen rows: shown, never added, changed or deleted here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class VersionInline(ReadOnly, admin.TabularInline):
    model = DatasetVersion
    fields = ["link", "record_count", "created_at", "created_by", "note"]
    readonly_fields = fields
    extra = 0
    show_change_link = False

    @admin.display(description="version")
    def link(self, obj):
        url = reverse("admin:evals_datasetversion_change", args=[obj.pk])
        return format_html('<a href="{}">v{}</a>', url, obj.number)


class TagInline(ReadOnly, admin.TabularInline):
    model = DatasetTag
    fields = ["name", "version", "moved_at", "moved_by"]
    readonly_fields = fields
    extra = 0


class StageInline(ReadOnly, admin.TabularInline):
    model = DatasetStage
    fields = ["turn", "reason", "staged_at"]
    readonly_fields = fields
    extra = 0


@admin.action(description="Freeze the next version (previous + corrected staged turns)")
def freeze_next_version(modeladmin, request, queryset):
    for dataset in queryset:
        try:
            made = services.dataset_version_create(dataset=dataset, created_by=request.user)
        except EvalsError as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)
            continue
        text = (
            f"{made.version}: {made.version.record_count} records ({made.added} added, "
            f"{made.changed} changed, {made.removed} removed)"
        )
        if made.waiting:
            text += f"; {made.waiting} staged turn(s) wait for a staff correction"
        modeladmin.message_user(request, text + ".", messages.SUCCESS)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "latest", "tag_list", "staged_count", "diff_link"]
    search_fields = ["name"]
    inlines = [TagInline, VersionInline, StageInline]
    actions = [freeze_next_version]
    fields = ["name", "description", "latest", "diff_link"]
    readonly_fields = ["latest", "diff_link"]

    def get_readonly_fields(self, request, obj=None):
        # The name is what commands, tags and MLflow datasets (`<name>@v<N>`) refer to.
        return (
            [*self.readonly_fields, "name"]
            if obj and obj.versions.exists()
            else self.readonly_fields
        )

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not (obj and obj.versions.exists())

    @admin.display(description="latest version")
    def latest(self, obj):
        version = selectors.dataset_latest_version(dataset=obj) if obj.pk else None
        return f"v{version.number} ({version.record_count} records)" if version else "—"

    @admin.display(description="tags")
    def tag_list(self, obj):
        return ", ".join(f"{t.name}→v{t.version.number}" for t in obj.tags.all()) or "—"

    @admin.display(description="staged")
    def staged_count(self, obj):
        return obj.staged.count()

    @admin.display(description="diff")
    def diff_link(self, obj):
        if not obj.pk:
            return "—"
        return format_html(
            '<a href="{}">compare versions</a>', reverse("admin:evals_dataset_diff", args=[obj.pk])
        )

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tags__version")

    def get_urls(self):
        own = [
            path(
                "<int:pk>/diff/",
                self.admin_site.admin_view(self.diff_view),
                name="evals_dataset_diff",
            )
        ]
        return own + super().get_urls()

    def diff_view(self, request, pk: int):
        dataset = get_object_or_404(Dataset, pk=pk)
        versions = list(dataset.versions.order_by("number"))
        numbers = [v.number for v in versions]

        def pick(param: str, default: int | None) -> DatasetVersion | None:
            raw = request.GET.get(param, "")
            number = int(raw) if raw.isdigit() and int(raw) in numbers else default
            return next((v for v in versions if v.number == number), None)

        new = pick("new", numbers[-1] if numbers else None)
        old = pick("old", numbers[-2] if len(numbers) > 1 else (numbers[0] if numbers else None))
        diff = selectors.dataset_diff(old=old, new=new) if old and new else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Compare versions of {dataset.name}",
            "dataset": dataset,
            "versions": versions,
            "old": old,
            "new": new,
            "diff": diff,
        }
        return TemplateResponse(request, "admin/evals/dataset_diff.html", context)


class RecordInline(ReadOnly, admin.TabularInline):
    model = DatasetRecord
    fields = ["key", "question", "expectation", "turn", "corrected_by", "corrected_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0

    @admin.display(description="question")
    def question(self, obj):
        return obj.question


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["__str__", "record_count", "created_at", "created_by", "note"]
    list_filter = ["dataset"]
    readonly_fields = ["dataset", "number", "record_count", "created_at", "created_by", "note"]
    fields = readonly_fields
    inlines = [RecordInline]


@admin.register(DatasetRecord)
class DatasetRecordAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["version", "key", "question", "corrected_by", "corrected_at", "trace_id"]
    list_filter = ["version__dataset", "version"]
    search_fields = ["key", "expectation", "trace_id"]
    readonly_fields = [
        "version",
        "key",
        "inputs",
        "expectation",
        "turn",
        "trace_id",
        "corrected_by",
        "corrected_at",
        "queue_item",
    ]
    fields = readonly_fields


class TagForm(forms.ModelForm):
    class Meta:
        model = DatasetTag
        fields = ["dataset", "name", "version"]

    def clean(self):
        data = super().clean()
        dataset, version = data.get("dataset"), data.get("version")
        if dataset and version and version.dataset_id != dataset.pk:
            self.add_error("version", f"{version} is not a version of {dataset}")
        return data

    def validate_unique(self):
        # The service moves an existing tag rather than refusing a second one of the name.
        pass


@admin.register(DatasetTag)
class DatasetTagAdmin(admin.ModelAdmin):
    """Moving a tag is saving it with another version; the service logs who moved what."""

    form = TagForm
    list_display = ["__str__", "dataset", "name", "version", "moved_at", "moved_by"]
    list_filter = ["dataset", "name"]

    def save_model(self, request, obj, form, change):
        try:
            tag = services.dataset_tag_move(
                dataset=form.cleaned_data["dataset"],
                name=form.cleaned_data["name"],
                version=form.cleaned_data["version"],
                moved_by=request.user,
            )
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = tag.pk

    def delete_model(self, request, obj):
        services.dataset_tag_delete(tag=obj, deleted_by=request.user)


class ResultInline(ReadOnly, admin.TabularInline):
    model = EvaluationResult
    fields = ["record", "passed", "score", "judge_passed", "output", "error"]
    readonly_fields = fields
    extra = 0
    max_num = 0


@admin.register(EvaluationRun)
class EvaluationRunAdmin(ReadOnly, admin.ModelAdmin):
    list_display = [
        "pk",
        "version",
        "asked_as",
        "state",
        "passed",
        "records",
        "regression",
        "app_version",
        "model",
        "started_at",
    ]
    list_filter = ["state", "regression", "version__dataset"]
    readonly_fields = [
        "version",
        "asked_as",
        "state",
        "records",
        "passed",
        "errors",
        "judged_passed",
        "previous",
        "newly_failing",
        "newly_passing",
        "regression",
        "app_version",
        "model",
        "judge_model",
        "decided_by",
        "match_threshold",
        "system_prompt_sha256",
        "system_prompt",
        "mlflow_run_id",
        "started_at",
        "finished_at",
    ]
    fields = readonly_fields
    inlines = [ResultInline]


@admin.action(description="Add to dataset…")
def add_to_dataset(modeladmin, request, queryset):
    """Stage the selected turns for a dataset's next version, and freeze it if asked.

    Needs the `evals.add_datasetstage` permission (and `evals.add_datasetversion` to freeze).
    """
    if not request.user.has_perm("evals.add_datasetstage"):
        modeladmin.message_user(request, "You may not add turns to datasets.", messages.ERROR)
        return None
    if "apply" in request.POST:
        form = AddToDatasetForm(request.POST)
        if form.is_valid():
            name = form.cleaned_data["dataset"]
            reason = f"staff: {request.user.get_username()}"
            staged = sum(
                services.dataset_stage(dataset_name=name, turn=turn, reason=reason)
                for turn in queryset
            )
            text = f"{staged} turn(s) staged for {name} ({queryset.count() - staged} already were)"
            level = messages.SUCCESS
            if form.cleaned_data["freeze"] and not request.user.has_perm(
                "evals.add_datasetversion"
            ):
                text += "; no version made (you may not freeze versions)"
                level = messages.WARNING
            elif form.cleaned_data["freeze"]:
                try:
                    made = services.dataset_version_create(
                        dataset=selectors.dataset_get(name=name), created_by=request.user
                    )
                    text += (
                        f"; {made.version} frozen with {made.version.record_count} records "
                        f"({made.added} added, {made.changed} changed)"
                    )
                    if made.waiting:
                        text += f", {made.waiting} staged turn(s) wait for a staff correction"
                except EvalsError as exc:
                    text += f"; no version made: {exc}"
                    level = messages.WARNING
            modeladmin.message_user(request, text + ".", level)
            return None
    else:
        form = AddToDatasetForm(selected=queryset.values_list("pk", flat=True))
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Add to dataset",
        "form": form,
        "count": queryset.count(),
        "corrected": len(
            selectors.staff_corrections(turn_ids=queryset.values_list("pk", flat=True))
        ),
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/evals/add_to_dataset.html", context)


_turn_admin = admin.site._registry.get(Turn)
if _turn_admin is not None and add_to_dataset not in (_turn_admin.actions or ()):
    _turn_admin.actions = [*(_turn_admin.actions or ()), add_to_dataset]
