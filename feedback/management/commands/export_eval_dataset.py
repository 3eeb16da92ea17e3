from django.core.management.base import BaseCommand, CommandError

from chat import tracing
from chatproject.commands import parse_when
from feedback import services


class Command(BaseCommand):
    help = (
        "Export production traces whose answers were corrected (expected_response) into an "
        "MLflow evaluation dataset. Idempotent: running it again adds no duplicates. "
        "Superseded by versioned datasets: `datasets add NAME --corrected --freeze` then "
        "`datasets sync` (docs/quality.md); kept for existing users."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="the evaluation dataset's name")
        parser.add_argument("--since", help="only turns from this time on (ISO 8601)")

    def handle(self, *args, name: str, since: str | None, **options):
        since_dt = parse_when(since, "--since")
        if not tracing.is_ready():
            raise CommandError(
                "MLflow is not reachable (see MLFLOW_TRACKING_URI); nothing exported"
            )

        def progress(done: int, of: int) -> None:
            self.stdout.write(f"  merged {done}/{of} traces")

        try:
            result = services.eval_dataset_export(name=name, since=since_dt, progress=progress)
        except tracing.TrackingUnavailable as exc:
            raise CommandError(f"MLflow failed during the export: {exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"dataset {name!r}: {result.traces} corrected traces merged, "
                f"{result.records} records in the dataset"
            )
        )
        if result.waiting:
            self.stdout.write(
                f"{result.waiting} corrections are not in MLflow yet (delivery pending/failed); "
                "run again once `deliver_feedback` has delivered them"
            )
