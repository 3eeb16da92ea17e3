from django.conf import settings
from django.db import models

from chat.models import Turn


class Feedback(models.Model):
    """One person's judgement of one turn; the ORM is the source of truth, MLflow its mirror.

    Every change bumps `version`; the delivery worker makes MLflow match the row and records the
    version it delivered, so a change made during a delivery is delivered again, never lost. A
    deliverer that wrote after its lease ran out bumps it too: MLflow changed under whatever the
    deliverer that took over recorded.
    """

    class Name(models.TextChoices):
        IS_CORRECT = "response_is_correct", "Response is correct"
        RATING = "user_rating", "User rating (1-5)"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_feedback"
    )
    is_correct = models.BooleanField(null=True, blank=True)
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    comment = models.TextField(blank=True)
    expected_response = models.TextField(blank=True)
    withdrawn = models.BooleanField(default=False)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Delivery to MLflow.
    delivery_state = models.CharField(
        max_length=16, choices=Delivery.choices, default=Delivery.PENDING, db_index=True
    )
    delivered_version = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    # Set by the first delivery attempt ever: before it, MLflow surely has nothing of this row.
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Held by the deliverer working on the row; edits never touch it, so no two deliveries of
    # one row ever overlap (an edit during a delivery is delivered right after it).
    leased_until = models.DateTimeField(null=True, blank=True)
    # Which delivery attempt holds the lease: only it releases the lease and records the result,
    # so a deliverer that outlived its lease cannot undo the one that took the row over.
    lease_owner = models.CharField(max_length=32, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    feedback_assessment_id = models.CharField(max_length=64, blank=True)
    expectation_assessment_id = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "turn"], name="feedback_one_per_user_turn"),
            models.CheckConstraint(
                condition=models.Q(rating__isnull=True) | models.Q(rating__gte=1, rating__lte=5),
                name="feedback_rating_1_to_5",
            ),
        ]
        indexes = [
            models.Index(fields=["delivery_state", "next_attempt_at"], name="feedback_due"),
            # Rules (quality) read what changed since their last pass.
            models.Index(fields=["updated_at", "id"], name="feedback_changed"),
            # Delivered feedback changed since a time (`audit_traces --since`).
            models.Index(fields=["delivery_state", "updated_at"], name="feedback_state_updated"),
        ]

    def __str__(self) -> str:
        return f"Feedback by {self.user} on turn {self.turn_id}"

    @property
    def name(self) -> str | None:
        if self.rating is not None:
            return self.Name.RATING
        if self.is_correct is not None:
            return self.Name.IS_CORRECT
        return None

    @property
    def value(self) -> bool | int | None:
        return self.rating if self.rating is not None else self.is_correct


class ReviewClaim(models.Model):
    """A staff member's hold on a turn in the review queue: nobody else is shown it meanwhile."""

    turn = models.OneToOneField(
        Turn, on_delete=models.CASCADE, primary_key=True, related_name="review_claim"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"Turn {self.turn_id} held by {self.reviewer} until {self.expires_at:%H:%M:%S}"


class QueueItem(models.Model):
    """A turn put in the review queue (by a rule, or by staff), and where its review stands.

    One item per turn, whoever asks (a second rule matching the same turn queues nothing new).
    The states are the first half of a disliked answer's lifecycle; the dataset version that
    holds its correction and the evaluation run it passes since are the other half (`evals`).
    """

    class State(models.TextChoices):
        NEW = "new", "New"
        IN_REVIEW = "in_review", "In review"
        CORRECTED = "corrected", "Corrected"
        NOT_A_PROBLEM = "not_a_problem", "Not a problem"

    turn = models.OneToOneField(Turn, on_delete=models.CASCADE, related_name="queue_item")
    # Why it is in the queue: the rule's name, or "staff: <username>".
    reason = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=State.choices, default=State.NEW, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"], name="queue_item_open")]

    def __str__(self) -> str:
        return f"Turn {self.turn_id} queued ({self.reason}): {self.get_state_display()}"


class GoldItem(models.Model):
    """A turn whose right label is known, mixed into the review queue unannounced, so each
    reviewer's labels can be checked against it (the agreement report)."""

    turn = models.OneToOneField(Turn, on_delete=models.CASCADE, related_name="gold_item")
    is_correct = models.BooleanField(help_text="the known label: the answer is correct")
    note = models.TextField(blank=True, help_text="why; shown in the report, never to reviewers")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Gold: turn {self.turn_id} is {'correct' if self.is_correct else 'wrong'}"
