import logging
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand

from chat import delivery, tracing
from chat.models import TraceExport
from chatproject.commands import run_worker, summary

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Write recorded traces to MLflow. Without --loop: one pass over everything due, with "
        "progress. With --loop: the worker `make run` starts (also closes turns whose worker "
        "died); stops cleanly on SIGTERM. Several may run at once against one database."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep polling until stopped")
        parser.add_argument(
            "--retry-failed", action="store_true", help="re-queue failed traces first"
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=settings.TRACE_DELIVERY_BATCH,
            help="traces per MLflow write (default TRACE_DELIVERY_BATCH)",
        )

    def handle(self, *args, loop: bool, retry_failed: bool, batch: int, **options):
        if retry_failed:
            self.stdout.write(f"re-queued {delivery.trace_retry()} failed traces")
        if loop:
            self._loop(batch)
        else:
            self._one_pass(batch)

    def _one_pass(self, batch: int) -> None:
        total: Counter = Counter()
        waiting = TraceExport.objects.filter(state=TraceExport.State.PENDING)
        of = waiting.count()
        while True:
            counts = delivery.trace_deliver_due(limit=batch)
            total.update(counts)
            self.stdout.write(f"  [{total['exported']}/{of}] {summary(total)}")
            if counts["exported"] < batch:
                break
        self.stdout.write(
            self.style.SUCCESS(
                f"exported {total['exported']}, failed {total['failed']}, "
                f"{waiting.count()} pending (retried later with backoff)"
            )
        )

    def _loop(self, batch: int) -> None:
        self.stdout.write(
            f"trace worker polling every {settings.TRACE_POLL_INTERVAL_S}s "
            f"(tracking uri {settings.MLFLOW_TRACKING_URI})"
        )

        def chores() -> list[str]:
            lines = []
            if closed := delivery.turn_close_abandoned():
                lines.append(f"closed {len(closed)} abandoned turn(s): {closed[:10]}")
            if resumed := delivery.trace_resume_after_outage():
                lines.append(f"tracking store is back: resuming {resumed} traces")
            return lines

        def deliver() -> Counter:
            # Until the experiment is resolved (the server was down at start-up), wait.
            return delivery.trace_deliver_due(limit=batch) if tracing.is_ready() else Counter()

        run_worker(
            name="trace delivery",
            deliver=deliver,
            batch=batch,
            poll_s=settings.TRACE_POLL_INTERVAL_S,
            chores=chores,
            chores_every_s=5.0,
            write=self.stdout.write,
        )
