import functools
import json
import re
import uuid

import orjson
from django.conf import settings
from django.db import connections, models, router
from django.utils import timezone

# What a client may send as X-Request-ID: MLflow keeps it in a VARCHAR(50) column.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,50}\Z")


class ChatSession(models.Model):
    """One conversation; its id is the trace's `mlflow.trace.session`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Deleted by its owner: hidden from them, kept (with its turns and everyone's feedback on
    # them) for staff, who can purge it in the admin.
    deleted_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="chatsession_owner_recent")]

    def __str__(self) -> str:
        return self.title or f"Session {self.id}"


class Turn(models.Model):
    """One request/answer exchange: the unit that is traced, replayed and rated."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="turns")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_turns"
    )
    # Validated against REQUEST_ID_PATTERN by every API that takes one.
    client_request_id = models.CharField(max_length=50)
    trace_id = models.CharField(max_length=64, blank=True, db_index=True)
    endpoint = models.CharField(max_length=50, blank=True)
    # The deployment that answered, as on the trace: reports group by these without MLflow.
    environment = models.CharField(max_length=100, blank=True, db_index=True)
    app_version = models.CharField(max_length=100, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "client_request_id"], name="turn_unique_request_id_per_user"
            )
        ]
        indexes = [models.Index(fields=["session", "created_at"], name="turn_session_created")]

    def __str__(self) -> str:
        return f"Turn {self.pk} ({self.client_request_id})"

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["session", "created_at"], name="message_session_created")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class FastJSONEncoder(json.JSONEncoder):
    """`json.dumps(cls=...)` through orjson: a trace payload in ~5 us instead of ~45-130 us.

    JSONField takes an encoder class on every backend, so this is the whole change. Anything
    orjson refuses (a type it does not know) goes to the standard encoder, which may raise.
    """

    def encode(self, o) -> str:
        try:
            return orjson.dumps(o, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return super().encode(o)


class TraceExportManager(models.Manager):
    # The row's four values that vary; every other column takes its field's default.
    GIVEN = ("turn", "trace_id", "payload", "created_at")

    def enqueue(self, *, turn_id: int, trace_id: str, payload: dict) -> None:
        """Insert a pending row: `create()`'s row, written with one prepared INSERT.

        This is the one write tracing adds to a turn, so it is kept to what the database does:
        building and saving a model instance cost ~300 us more per turn in a request than the
        statement itself (bench/turn_latency.py). The values go through the fields' own
        `get_db_prep_save`, so SQLite and PostgreSQL store exactly what `create()` would
        (tests/chat/test_services.py compares the two rows).
        """
        connection = connections[router.db_for_write(self.model)]
        sql, fields, defaults = self._insert_statement(connection.alias)
        given = (turn_id, trace_id, payload, timezone.now())  # created_at: auto_now_add
        values = [
            field.get_db_prep_save(value, connection)
            for field, value in zip(fields, given, strict=True)
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, [*values, *defaults])

    @functools.cache  # noqa: B019 (one manager per model, one statement per database)
    def _insert_statement(self, alias: str) -> tuple[str, list, list]:
        connection = connections[alias]
        meta = self.model._meta
        fields = [meta.get_field(name) for name in self.GIVEN]
        rest = [f for f in meta.concrete_fields if not f.primary_key and f not in fields]
        defaults = [field.get_db_prep_save(field.get_default(), connection) for field in rest]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in [*fields, *rest])
        # Names from the model's own meta, every value a parameter.
        sql = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608
            quote(meta.db_table), columns, ", ".join(["%s"] * (len(fields) + len(rest)))
        )
        return sql, fields, defaults


class TraceExport(models.Model):
    """One turn attempt's complete trace, stored with the answer; MLflow gets it from here.

    The request path only inserts this row (in the turn's transaction). The delivery process
    (`manage.py deliver_traces`) writes it to MLflow with its original ids and timestamps, and
    marks it exported only once MLflow has the whole trace. Writing is an upsert keyed by
    `trace_id` and the span ids in `payload`, so a retry after any crash adds nothing twice.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        EXPORTED = "exported", "Exported"
        FAILED = "failed", "Failed"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="trace_exports")
    trace_id = models.CharField(max_length=64, unique=True)
    payload = models.JSONField(encoder=FastJSONEncoder)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Held by the deliverer writing the row: several delivery processes share the table.
    leased_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    exported_at = models.DateTimeField(null=True, blank=True)
    # Set when `audit_traces --repair` had to write it again.
    repaired_at = models.DateTimeField(null=True, blank=True)

    objects = TraceExportManager()

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="traceexport_due")]

    def __str__(self) -> str:
        return f"Trace {self.trace_id} of turn {self.turn_id} ({self.state})"
