from django.db import models
from django.utils import timezone


class Erasure(models.Model):
    """The record that a person was erased: who asked, when, how much went, and the check after.

    It holds no username and no content, only ids and counts. The user ids are plain integers,
    not foreign keys: the person erased no longer exists, and neither may the one who asked.
    `trace_ids` and `rated_trace_ids` (opaque MLflow ids) are what the MLflow part still has to
    remove once the database part is done; they are emptied when the erasure is verified.
    """

    class State(models.TextChoices):
        PENDING_MLFLOW = "pending_mlflow", "Pending MLflow"
        COMPLETED = "completed", "Completed"

    class Via(models.TextChoices):
        COMMAND = "command", "manage.py erase_user"
        ADMIN = "admin", "Admin"
        SELF = "self", "The person, DELETE /api/me/"

    subject_user_id = models.PositiveBigIntegerField(db_index=True)
    requested_by_id = models.PositiveBigIntegerField(null=True, blank=True)
    via = models.CharField(max_length=16, choices=Via.choices)
    requested_at = models.DateTimeField(auto_now_add=True, db_index=True)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING_MLFLOW, db_index=True
    )
    # Database rows removed, by kind: sessions, turns, messages, trace_exports, feedback, users.
    rows_removed = models.JSONField(default=dict)
    traces_removed = models.PositiveIntegerField(default=0)
    artifacts_removed = models.PositiveIntegerField(default=0)
    assessments_removed = models.PositiveIntegerField(default=0)
    trace_ids = models.JSONField(default=list, blank=True)
    rated_trace_ids = models.JSONField(default=list, blank=True)
    # MLflow evaluation datasets (copies of dataset versions, `<name>@v<N>`) that held records
    # of the person's conversations: deleted from MLflow; `datasets sync` makes them anew.
    eval_datasets = models.JSONField(default=list, blank=True)
    # A trace deliverer held some of the person's traces when they were erased: its write may
    # land after ours, so the erasure is verified again once its lease is over.
    in_flight_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # The check through MLflow search: what was left (None: not checked yet).
    remaining_traces = models.PositiveIntegerField(null=True, blank=True)
    remaining_assessments = models.PositiveIntegerField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"Erasure of user {self.subject_user_id} ({self.state})"

    @property
    def verified(self) -> bool:
        return self.state == self.State.COMPLETED


class RetentionPass(models.Model):
    """One pass of retention: the cut-offs it applied, what it removed (counted), and the check.

    The feedback worker starts one every RETENTION_INTERVAL_S and works through it a batch per
    chore; `manage.py apply_retention` runs one to the end. A pass is completed only when the
    check finds nothing older than its cut-offs (MLflow search, and the database).
    """

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        PENDING_MLFLOW = "pending_mlflow", "Pending MLflow"
        COMPLETED = "completed", "Completed"

    class Via(models.TextChoices):
        WORKER = "worker", "Feedback worker"
        COMMAND = "command", "manage.py apply_retention"

    via = models.CharField(max_length=16, choices=Via.choices)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.RUNNING, db_index=True
    )
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Older than these goes (None: that retention is off).
    trace_cutoff = models.DateTimeField(null=True, blank=True)
    conversation_cutoff = models.DateTimeField(null=True, blank=True)
    # By kind: sessions, turns, messages, feedback, admin_log, trace_rows, traces, artifacts.
    removed = models.JSONField(default=dict)
    # The check: what was still older than the cut-offs when it ran (None: not checked yet).
    remaining = models.JSONField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"Retention pass {self.pk} ({self.state})"
