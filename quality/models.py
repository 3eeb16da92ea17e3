"""Rules that route judged turns to the review queue, a dataset and webhooks; alerts on quality.

Why an app of its own: rules read chat (turns) and feedback (votes, the review queue) and act on
both, so they sit above them. Dependencies run one way: quality -> feedback -> chat; the feedback
worker runs our chore through settings (`FEEDBACK_WORKER_CHORES`), never by importing us.
"""

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models

from chat.models import Turn


def new_secret() -> str:
    return secrets.token_hex(32)


# Webhooks go over HTTP(S) only (URLField alone would also take ftp://).
http_url = URLValidator(schemes=["http", "https"])


class Rule(models.Model):
    """A filter over turns, a sampling rate, and what to do with each turn it picks.

    The filter's conditions all hold at once (AND), except the two vote conditions, where either
    will do: "thumbs down" and "rating <= n" together mean "disliked". Votes and comments are the
    turn owner's; a correction is anyone's (the owner's "better answer" or a reviewer's).
    """

    name = models.CharField(
        max_length=100, unique=True, help_text="Also the reason shown in the review queue."
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)

    # The filter.
    thumbs_down = models.BooleanField(
        "owner's thumbs down", default=False, help_text="The person who asked voted it bad."
    )
    max_rating = models.PositiveSmallIntegerField(
        "owner's rating at most",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text="1-5; with thumbs down, either one matches.",
    )
    has_comment = models.BooleanField("owner commented", default=False)
    has_correction = models.BooleanField(
        "has a correction",
        default=False,
        help_text="Someone (the owner or a reviewer) gave the answer it should have given.",
    )
    model = models.CharField(max_length=200, blank=True, help_text="Exact model name; blank: any.")
    app_version = models.CharField(max_length=100, blank=True, help_text="Blank: any.")
    environment = models.CharField(max_length=100, blank=True, help_text="Blank: any.")
    failed_turns = models.BooleanField(
        "failed turns",
        default=False,
        help_text="Match turns that failed (they have no feedback) instead of answered ones.",
    )
    sample_rate = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of matching turns acted on (0-1). The pick is fixed per rule and turn, "
        "so applying the rule again never changes it.",
    )

    # The actions.
    enqueue = models.BooleanField(
        "put in the review queue", default=True, help_text="With the rule's name as the reason."
    )
    dataset_name = models.CharField(
        max_length=200,
        blank=True,
        help_text="Add each turn to this evaluation dataset's next version; blank: none.",
    )
    webhook_url = models.URLField(
        blank=True, validators=[http_url], help_text="POST a signed JSON body; blank: none."
    )
    webhook_secret = models.CharField(
        max_length=128,
        default=new_secret,
        help_text="HMAC-SHA256 key for the X-Chat-Signature header.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        permissions = [("manage_rules", "Can add, change, delete and apply rules")]

    def __str__(self) -> str:
        return self.name

    @property
    def uses_feedback(self) -> bool:
        return bool(self.thumbs_down or self.max_rating or self.has_comment or self.has_correction)

    def clean(self) -> None:
        if self.failed_turns and self.uses_feedback:
            raise ValidationError(
                "A failed turn has no answer, so nobody can vote on it: choose failed turns or "
                "feedback conditions, not both."
            )
        if not (self.enqueue or self.dataset_name or self.webhook_url):
            raise ValidationError("Choose at least one action.")


class RuleMatch(models.Model):
    """A turn a rule picked and acted on: recorded once, so nothing is acted on twice."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="matches")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="rule_matches")
    matched_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # How it was found: by the worker as the vote came in, or applied to past turns.
    backfill = models.BooleanField(default=False)
    # What each action did: queued (False: it was already in the queue), staged in the dataset
    # (None: not asked / not available), the webhook delivery made.
    queued = models.BooleanField(null=True)
    staged = models.BooleanField(null=True)
    delivery = models.ForeignKey(
        "WebhookDelivery", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "turn"], name="rulematch_once_per_rule_turn")
        ]

    def __str__(self) -> str:
        return f"{self.rule} matched turn {self.turn_id}"


class MatchCursor(models.Model):
    """How far the worker has matched: feedback changed up to `position`, turns up to `turn_id`.

    One row. Each pass reads only what changed since, so it costs what the new votes cost.
    """

    name = models.CharField(max_length=32, primary_key=True)
    position = models.DateTimeField(null=True)
    turn_id = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: feedback to {self.position}, turns to {self.turn_id}"


class Alert(models.Model):
    """A figure over a recent window against a threshold; fires and resolves, with a webhook."""

    class Metric(models.TextChoices):
        NEGATIVE_SHARE = "negative_share", "Share of negative feedback"
        ERROR_RATE = "error_rate", "Error rate (failed turns / turns)"
        P95_LATENCY_MS = "p95_latency_ms", "p95 latency (ms)"

    class State(models.TextChoices):
        RESOLVED = "resolved", "Resolved"
        FIRING = "firing", "Firing"

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    metric = models.CharField(max_length=32, choices=Metric.choices)
    model = models.CharField(
        max_length=200, blank=True, help_text="Only turns answered by this model; blank: all."
    )
    window_minutes = models.PositiveIntegerField(default=15, validators=[MinValueValidator(1)])
    threshold = models.FloatField(
        help_text="Fires above this: a share (0-1) or milliseconds for latency."
    )
    min_samples = models.PositiveIntegerField(
        default=20, help_text="Fewer feedback/turns than this in the window: no change of state."
    )
    webhook_url = models.URLField(
        blank=True,
        validators=[http_url],
        help_text='Gets {"text": "..."} (Slack-compatible) on each change; blank: none.',
    )
    webhook_secret = models.CharField(max_length=128, default=new_secret)

    state = models.CharField(max_length=16, choices=State.choices, default=State.RESOLVED)
    last_value = models.FloatField(null=True, blank=True)
    last_samples = models.PositiveIntegerField(null=True, blank=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AlertEvent(models.Model):
    """An alert starting or stopping to fire, with the figure that made it."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    state = models.CharField(max_length=16, choices=Alert.State.choices)
    value = models.FloatField()
    samples = models.PositiveIntegerField()
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivery = models.ForeignKey(
        "WebhookDelivery", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.alert} {self.state} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class WebhookDelivery(models.Model):
    """One signed POST to a receiver, retried with backoff until it answers 2xx or gives up."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    rule = models.ForeignKey(
        Rule, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    alert = models.ForeignKey(
        Alert, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    url = models.URLField()
    body = models.TextField(help_text="The exact bytes sent (and signed), as UTF-8.")
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_due")]

    def __str__(self) -> str:
        return f"Webhook {self.pk} to {self.url} ({self.state})"

    @property
    def secret(self) -> str:
        source = self.rule or self.alert
        return source.webhook_secret if source else ""
