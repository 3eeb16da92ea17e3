import logging
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string

from chatproject.commands import run_worker, summary
from feedback import selectors, services
from feedback.models import Feedback

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Deliver stored feedback to MLflow as assessments. Without --loop: one pass over what is "
        "due, with progress. With --loop: the worker `make run` starts; stops cleanly on SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="keep polling until stopped")
        parser.add_argument(
            "--retry-failed", action="store_true", help="re-queue failed feedback first"
        )
        parser.add_argument("--batch", type=int, default=100, help="rows per pass (default 100)")
        parser.add_argument(
            "--threads",
            type=int,
            default=settings.FEEDBACK_DELIVERY_THREADS,
            help="concurrent deliveries (default FEEDBACK_DELIVERY_THREADS)",
        )

    def handle(self, *args, loop: bool, retry_failed: bool, batch: int, threads: int, **options):
        self.threads = threads
        if retry_failed:
            self.stdout.write(f"re-queued {services.feedback_retry_failed()} failed feedback")
        if loop:
            self._loop(batch)
        else:
            self._one_pass(batch)

    def _one_pass(self, batch: int) -> None:
        if asked := services.feedback_request_traces():
            self.stdout.write(f"asked for {asked} sampled-out trace(s) that feedback waits on")
        total: Counter = Counter()
        while True:
            counts = services.feedback_deliver_due(
                limit=batch, threads=self.threads, progress=self._progress
            )
            total.update(counts)
            if sum(counts.values()) < batch:
                break
        waiting = selectors.feedback_pending().count()
        self.stdout.write(
            self.style.SUCCESS(
                f"delivered {total[Feedback.Delivery.DELIVERED]}, "
                f"failed {total[Feedback.Delivery.FAILED]}, "
                f"{waiting} pending (retried later with backoff)"
            )
        )

    def _progress(self, done: int, of: int, counts: Counter) -> None:
        if done == of or done % 25 == 0:
            self.stdout.write(f"  [{done}/{of}] {summary(counts)}")

    def _loop(self, batch: int) -> None:
        self.stdout.write(
            f"feedback worker polling every {settings.FEEDBACK_POLL_INTERVAL_S}s "
            f"(tracking uri {settings.MLFLOW_TRACKING_URI})"
        )

        extra = [import_string(path) for path in settings.FEEDBACK_WORKER_CHORES]

        def chores() -> list[str]:
            resumed = services.feedback_resume_after_outage()
            lines = [f"tracking store is back: resuming {resumed} feedback"] if resumed else []
            if asked := services.feedback_request_traces():
                lines.append(f"asked for {asked} sampled-out trace(s) that feedback waits on")
            for chore in extra:  # wired by the project (settings), so feedback imports no app
                # One failing chore (a database hiccup in a retention pass) must not keep the
                # others from running: each is on its own, and runs again next time.
                try:
                    lines += chore()
                except Exception as exc:
                    logger.exception("feedback worker chore failed chore=%s", chore.__qualname__)
                    lines.append(f"{chore.__module__}.{chore.__qualname__} failed: {exc}"[:300])
            return lines

        run_worker(
            name="feedback delivery",
            deliver=lambda: services.feedback_deliver_due(limit=batch, threads=self.threads),
            batch=batch,
            poll_s=settings.FEEDBACK_POLL_INTERVAL_S,
            chores=chores,
            chores_every_s=settings.FEEDBACK_PROBE_INTERVAL_S,
            write=self.stdout.write,
        )
