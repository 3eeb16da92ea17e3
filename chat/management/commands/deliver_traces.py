import logging
import signal
import threading
import time
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from chat import delivery, tracing
from chat.models import TraceExport

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
            self.stdout.write(f"  [{total['exported']}/{of}] {_summary(total)}")
            if counts["exported"] < batch:
                break
        self.stdout.write(
            self.style.SUCCESS(
                f"exported {total['exported']}, failed {total['failed']}, "
                f"{waiting.count()} pending (retried later with backoff)"
            )
        )

    def _loop(self, batch: int) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(
            f"trace worker polling every {settings.TRACE_POLL_INTERVAL_S}s "
            f"(tracking uri {settings.MLFLOW_TRACKING_URI})"
        )
        next_chores = time.monotonic()
        while not stop.is_set():
            try:
                close_old_connections()
                if time.monotonic() >= next_chores:
                    next_chores = time.monotonic() + 5
                    if closed := delivery.turn_close_abandoned():
                        self.stdout.write(f"closed {len(closed)} abandoned turn(s): {closed[:10]}")
                    if resumed := delivery.trace_resume_after_outage():
                        self.stdout.write(f"tracking store is back: resuming {resumed} traces")
                if not tracing.is_ready():
                    stop.wait(1)
                    continue
                counts = delivery.trace_deliver_due(limit=batch)
            except Exception:
                # E.g. the database restarting: the worker must outlive it, and nothing is lost
                # (rows stay pending; a claimed row's lease expires).
                logger.exception("trace worker pass failed; retrying shortly")
                stop.wait(5)
                continue
            if counts:
                self.stdout.write(f"trace delivery: {_summary(counts)}")
            if sum(counts.values()) < batch:
                stop.wait(settings.TRACE_POLL_INTERVAL_S)
        self.stdout.write("trace worker stopped")


def _summary(counts: Counter) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "nothing due"
