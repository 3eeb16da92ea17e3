import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat import tracing
from evals import selectors, services
from evals.exceptions import EvalsError


def _clip(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Command(BaseCommand):
    help = (
        "Run the assistant as configured (LLM_SYSTEM_PROMPT and the chat model) over a dataset "
        "version, score the answers against the corrections, record the run (database and "
        "MLflow), print the pass rate and what changed since the previous run on that version. "
        "Exits 1 on a regression, so CI can gate a release."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dataset", required=True, help="NAME@TAG (prod), NAME@vN, or NAME (latest version)"
        )
        prompt = parser.add_mutually_exclusive_group()
        prompt.add_argument("--system-prompt", help="try this system prompt instead")
        prompt.add_argument("--system-prompt-file", help="…read from this file")
        parser.add_argument(
            "--decide-by",
            default="match",
            choices=services.DECIDED_BY,
            help="what makes a record pass: the code scorer (default), the LLM judge, either",
        )
        parser.add_argument(
            "--threshold",
            type=float,
            help=f"token-overlap F1 that counts as a match (EVAL_MATCH_THRESHOLD, "
            f"{settings.EVAL_MATCH_THRESHOLD})",
        )
        parser.add_argument("--no-judge", action="store_true", help="skip the LLM judge")
        parser.add_argument(
            "--concurrency", type=int, help=f"answers at once (default {settings.EVAL_CONCURRENCY})"
        )
        parser.add_argument(
            "--min-pass-rate", type=float, help="also exit 1 when the pass rate is below this"
        )
        parser.add_argument(
            "--show", type=int, default=20, help="list at most this many changed records"
        )

    def handle(self, *args, **opts):
        prompt = opts["system_prompt"]
        if opts["system_prompt_file"]:
            try:
                prompt = Path(opts["system_prompt_file"]).read_text()
            except OSError as exc:
                raise CommandError(f"--system-prompt-file: {exc}") from exc
        try:
            version, asked_as = selectors.version_resolve(ref=opts["dataset"])
        except EvalsError as exc:
            raise CommandError(str(exc)) from exc
        by_tag = asked_as and not selectors.VERSION_REF.match(asked_as)
        shown = f"{version} ({opts['dataset']})" if by_tag else version
        self.stdout.write(f"evaluating {shown}: {version.record_count} records")
        started = time.monotonic()

        def progress(done: int, of: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-9)
            self.stdout.write(f"  answered {done}/{of} ({rate:.0f} records/s)")

        try:
            outcome = services.evaluation_run(
                version=version,
                asked_as=asked_as,
                system_prompt=prompt,
                use_judge=False if opts["no_judge"] else None,
                decide_by=opts["decide_by"],
                threshold=opts["threshold"],
                concurrency=opts["concurrency"],
                progress=progress,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        wall = time.monotonic() - started
        run = outcome.run
        self.stdout.write(
            f"model {run.model}, app version {run.app_version}, "
            f"system prompt sha256 {run.system_prompt_sha256[:12]}"
        )
        if outcome.judge_skipped:
            self.stdout.write(f"LLM judge skipped: {outcome.judge_skipped}")
        elif run.judged_passed is not None:
            self.stdout.write(f"LLM judge: {run.judged_passed}/{run.records} judged right")
        rate = f"{run.pass_rate:.1%}" if run.pass_rate is not None else "n/a"
        self.stdout.write(
            f"evaluation run {run.pk}: {run.passed}/{run.records} passed ({rate}), "
            f"{run.errors} errors, {wall:.2f} s ({run.records / max(wall, 1e-9):.0f} records/s)"
        )
        self._changes(outcome, opts["show"])
        if outcome.mlflow_error:
            self.stdout.write(self.style.WARNING(f"not logged to MLflow: {outcome.mlflow_error}"))
        else:
            url = tracing.run_ui_url(run.mlflow_run_id)
            self.stdout.write(f"MLflow run {run.mlflow_run_id}" + (f": {url}" if url else ""))
        if run.state == run.State.FAILED:
            raise CommandError(
                f"every answer failed (the model is unreachable?): {run.errors} errors",
                returncode=2,
            )
        if run.regression:
            previous = outcome.previous
            raise CommandError(
                f"regression on {version}: {run.newly_failing} record(s) newly failing, "
                f"pass rate {rate} vs {previous.pass_rate:.1%} in run {previous.pk}",
                returncode=1,
            )
        if opts["min_pass_rate"] is not None and (run.pass_rate or 0) < opts["min_pass_rate"]:
            raise CommandError(
                f"pass rate {rate} is below --min-pass-rate {opts['min_pass_rate']:.1%}",
                returncode=1,
            )
        self.stdout.write(self.style.SUCCESS("no regression"))

    def _changes(self, outcome, show: int) -> None:
        previous = outcome.previous
        if previous is None:
            self.stdout.write(f"first completed run on {outcome.run.version}: nothing to compare")
            return
        before = f"{previous.pass_rate:.1%}" if previous.pass_rate is not None else "n/a"
        self.stdout.write(
            f"since run {previous.pk} ({previous.passed}/{previous.records}, {before}; "
            f"app version {previous.app_version}): {len(outcome.newly_failing)} newly failing, "
            f"{len(outcome.newly_passing)} newly passing"
        )
        for sign, records in (("-", outcome.newly_failing), ("+", outcome.newly_passing)):
            for record in records[:show]:
                self.stdout.write(f"  {sign} {record.key}  {_clip(record.question)}")
            if len(records) > show:
                self.stdout.write(f"  {sign} … and {len(records) - show} more")
