"""Versioned evaluation datasets built from staff corrections, and evaluation runs over them.

A version is frozen when it is made: its records are written once, in the transaction that makes
it, and never change (the model, its queryset and the admin refuse). What moves is around it:
turns staged for the next version, named tags that point at a version, and the MLflow copy.
"""

from django.conf import settings
from django.db import models

from chat.models import Turn
from evals.exceptions import VersionImmutable
from feedback.models import QueueItem


class FrozenQuerySet(models.QuerySet):
    """Bulk changes to frozen rows are refused like single ones.

    Deleting a turn or a user still clears the provenance link (SET_NULL): Django's collector
    writes that through the base manager, not this queryset.
    """

    def update(self, **kwargs):
        raise VersionImmutable(f"{self.model.__name__} rows are frozen; make a new version")

    def delete(self):
        raise VersionImmutable(f"{self.model.__name__} rows are frozen; they cannot be deleted")


class Frozen(models.Model):
    """A row written once and never changed or deleted."""

    objects = FrozenQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise VersionImmutable(f"{type(self).__name__} {self.pk} is frozen")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise VersionImmutable(f"{type(self).__name__} {self.pk} is frozen")


class Dataset(models.Model):
    """A named evaluation dataset: its versions, the turns staged for the next one, its tags."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(Frozen):
    """Version `number` of a dataset: exactly the records it was frozen with."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    record_count = models.PositiveIntegerField(default=0)
    # Records taken out by erasures of the people whose conversations they held: the one change
    # a frozen version allows (`evals.services.dataset_records_erase`).
    erased_records = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="dataset_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name}@v{self.number}"

    @property
    def ref(self) -> str:
        return str(self)


class DatasetRecord(Frozen):
    """One case: the conversation up to a turn's question, and the answer staff say is right.

    `key` names the case across versions ("turn:<id>"), so a diff still pairs records after the
    turn itself was deleted (its link is then cleared, the content stays).
    """

    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="records")
    key = models.CharField(max_length=100)
    # [{role, content}, ...] without the system prompt: evaluation adds the configured one.
    inputs = models.JSONField()
    expectation = models.TextField()
    turn = models.ForeignKey(
        Turn, on_delete=models.SET_NULL, null=True, blank=True, related_name="dataset_records"
    )
    trace_id = models.CharField(max_length=64, blank=True)
    corrected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    corrected_at = models.DateTimeField(null=True, blank=True)
    queue_item = models.ForeignKey(
        QueueItem, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["version", "id"]
        constraints = [
            models.UniqueConstraint(fields=["version", "key"], name="dataset_record_unique_key")
        ]

    def __str__(self) -> str:
        return f"{self.version} {self.key}"

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.inputs if m.get("role") == "user"]
        return users[-1] if users else ""


class DatasetStage(models.Model):
    """A turn waiting for a dataset's next version (it joins once staff have corrected it)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="staged")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=200)
    staged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["staged_at", "id"]
        verbose_name = "turn staged for the next version"
        verbose_name_plural = "turns staged for the next version"
        constraints = [
            models.UniqueConstraint(fields=["dataset", "turn"], name="dataset_stage_once")
        ]

    def __str__(self) -> str:
        return f"Turn {self.turn_id} staged for {self.dataset.name} ({self.reason})"


class DatasetTag(models.Model):
    """A name (`prod`, `candidate`) pointing at one version of a dataset; staff move it."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="tags")
    name = models.SlugField(max_length=50)
    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="tags")
    moved_at = models.DateTimeField(auto_now=True)
    moved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["dataset", "name"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="dataset_tag_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name}@{self.name} → v{self.version.number}"


class DatasetSync(models.Model):
    """Where a version is in MLflow (one MLflow dataset per version, `<name>@v<N>`)."""

    version = models.OneToOneField(DatasetVersion, on_delete=models.CASCADE, related_name="sync")
    mlflow_dataset_id = models.CharField(max_length=64)
    mlflow_name = models.CharField(max_length=200)
    records = models.PositiveIntegerField(default=0)
    # The named tags as last mirrored to MLflow, so a moved tag is noticed.
    tags = models.JSONField(default=list)
    synced_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.mlflow_name} ({self.mlflow_dataset_id})"


class EvaluationRun(models.Model):
    """The assistant, as configured, run over one dataset version and scored."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="runs")
    # What the run was asked for ("prod", "v3" or ""), as given on the command line.
    asked_as = models.CharField(max_length=100, blank=True)
    app_version = models.CharField(max_length=100)
    model = models.CharField(max_length=200)
    system_prompt = models.TextField()
    system_prompt_sha256 = models.CharField(max_length=64)
    judge_model = models.CharField(max_length=200, blank=True)
    # How a record passes: "match" (the code scorer), "judge" or "either"; and the scorer's F1
    # threshold. Runs compare only with runs scored the same way.
    decided_by = models.CharField(max_length=16, default="match")
    match_threshold = models.FloatField(default=0.8)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    records = models.PositiveIntegerField(default=0)
    passed = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    judged_passed = models.PositiveIntegerField(null=True, blank=True)
    previous = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    newly_failing = models.PositiveIntegerField(default=0)
    newly_passing = models.PositiveIntegerField(default=0)
    regression = models.BooleanField(default=False)
    mlflow_run_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["version", "state"], name="evalrun_version_state")]

    def __str__(self) -> str:
        return f"Evaluation run {self.pk} on {self.version}"

    @property
    def pass_rate(self) -> float | None:
        return round(self.passed / self.records, 4) if self.records else None


class EvaluationResult(models.Model):
    """One record's outcome in one run."""

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    record = models.ForeignKey(DatasetRecord, on_delete=models.PROTECT, related_name="results")
    passed = models.BooleanField()
    output = models.TextField(blank=True)
    # The code scorer's token-overlap F1 against the expectation (1.0 for a normalised match).
    score = models.FloatField(default=0.0)
    exact = models.BooleanField(default=False)
    judge_passed = models.BooleanField(null=True, blank=True)
    judge_rationale = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "record_id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "record"], name="evalresult_once_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.record} in run {self.run_id}: {'pass' if self.passed else 'fail'}"
