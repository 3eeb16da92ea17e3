from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from privacy import retention
from privacy.models import RetentionPass


class Command(BaseCommand):
    help = (
        "Apply TRACE_RETENTION_DAYS and CONVERSATION_RETENTION_DAYS now: delete older traces "
        "(MLflow and the app's trace rows) and older conversations (turns, messages, feedback), "
        "a batch at a time with progress, then check through MLflow search and the database that "
        "nothing older is left. The feedback worker does the same every RETENTION_INTERVAL_S. "
        "Exit status 1 when the pass could not finish (the tracking store is down)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch",
            type=int,
            default=settings.RETENTION_BATCH,
            help="rows per batch (default RETENTION_BATCH)",
        )

    def handle(self, *args, batch: int, **options):
        if not retention.retention_configured():
            raise CommandError(
                "retention is off: set TRACE_RETENTION_DAYS and/or CONVERSATION_RETENTION_DAYS "
                "(days, >= 1) in the environment or .env"
            )
        done = retention.retention_run(batch=batch, say=self.stdout.write)
        removed = ", ".join(f"{n} {kind}" for kind, n in sorted(done.removed.items())) or "nothing"
        self.stdout.write(f"removed {removed}")
        if done.state != RetentionPass.State.COMPLETED:
            raise CommandError(
                f"retention pass {done.pk} is {done.state}: {done.last_error}; it goes on by "
                "itself in the feedback worker, or run `apply_retention` again"
            )
        remaining = ", ".join(f"{n} {kind}" for kind, n in sorted(done.remaining.items()))
        self.stdout.write(
            self.style.SUCCESS(f"retention pass {done.pk} completed; checked: {remaining} older")
        )
