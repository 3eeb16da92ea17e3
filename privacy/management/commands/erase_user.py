import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from privacy import services
from privacy.models import Erasure


class Command(BaseCommand):
    help = (
        "Erase a person: their account, conversations (hidden ones too), turns, messages, traces "
        "waiting for delivery and feedback from the database, then their traces (with artifact "
        "files and every assessment on them) and the assessments they logged on others' traces "
        "from MLflow, verified by searching MLflow for their user id. With --pending: finish "
        "erasures MLflow could not complete (run it from cron; exit status 1 while any remain)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", help="the person to erase")
        parser.add_argument(
            "--pending", action="store_true", help="finish erasures still pending MLflow"
        )

    def handle(self, *args, username: str | None, pending: bool, **options):
        if not username and not pending:
            raise CommandError("give a USERNAME, or --pending")
        erasures = []
        if username:
            erasures.append(self._erase(username))
        if pending:
            for erasure in services.erasure_finish_pending(progress=self.stdout.write):
                self._report(erasure)
                erasures.append(erasure)
        left = [e for e in erasures if e.state != Erasure.State.COMPLETED]
        if left:
            raise CommandError(
                f"{len(left)} erasure(s) still pending MLflow ({left[0].last_error}); "
                "run `erase_user --pending` again"
            )
        if pending and not erasures:
            self.stdout.write("no erasure pending")

    def _erase(self, username: str) -> Erasure:
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user {username!r}") from exc
        self.stdout.write(f"erasing user id={user.pk} from the database")
        erasure = services.user_erase(user=user, via=Erasure.Via.COMMAND)
        rows = erasure.rows_removed
        self.stdout.write(
            "  removed " + ", ".join(f"{n} {kind}" for kind, n in rows.items()) + " row(s)"
        )
        erasure = services.erasure_finish(erasure=erasure, progress=self.stdout.write)
        until = erasure.in_flight_until
        wait_s = (until - timezone.now()).total_seconds() if until else 0
        if (
            erasure.state != Erasure.State.COMPLETED
            and erasure.remaining_traces == 0
            and wait_s > 0
        ):
            # Only a delivery that was in flight is left to rule out: wait its lease out.
            self.stdout.write(f"waiting {wait_s:.0f} s for a trace delivery in flight to end")
            time.sleep(wait_s)
            erasure = services.erasure_finish(erasure=erasure, progress=self.stdout.write)
        self._report(erasure)
        return erasure

    def _report(self, erasure: Erasure) -> None:
        text = (
            f"erasure {erasure.pk} of user id={erasure.subject_user_id}: "
            f"{sum(erasure.rows_removed.values())} database row(s), "
            f"{erasure.traces_removed} trace(s), {erasure.artifacts_removed} artifact folder(s), "
            f"{erasure.assessments_removed} assessment(s) on others' traces removed; "
        )
        if erasure.state == Erasure.State.COMPLETED:
            self.stdout.write(self.style.SUCCESS(text + "verified: 0 traces left in MLflow"))
        else:
            self.stdout.write(self.style.WARNING(text + f"pending MLflow: {erasure.last_error}"))
