from django.core.management.base import BaseCommand, CommandError

from chat import audit as chat_audit
from chat import delivery, tracing
from chatproject.commands import parse_when
from feedback import audit as feedback_audit


class Command(BaseCommand):
    help = (
        "Check MLflow against the database (the source of truth): turns without their trace, "
        "traces without a turn, half-written traces, wrong user / session / request id / "
        "metadata, feedback without its assessment, with another value, or with an assessment "
        "the row does not hold (an old vote, a withdrawn answer). --repair fixes each "
        "from the database. Exits 1 when anything is off (after --repair: anything still off)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--since",
            help="only turns and feedback from this time on (a date, ISO 8601, or ago: 1d, 6h)",
        )
        parser.add_argument("--repair", action="store_true", help="write what is wrong again")

    def handle(self, *args, since: str | None, repair: bool, **options):
        since_dt = parse_when(since, "--since")
        if not tracing.is_ready():
            raise CommandError("MLflow is not reachable (see MLFLOW_TRACKING_URI); nothing audited")
        try:
            ok = self._audit(since_dt, repair)
        except tracing.TrackingUnavailable as exc:
            raise CommandError(f"MLflow stopped answering during the audit: {exc}") from exc
        if not ok:
            raise CommandError("the audit found problems (see above)", returncode=1)
        self.stdout.write(self.style.SUCCESS("MLflow matches the database"))

    def _audit(self, since, repair: bool) -> bool:
        traces = chat_audit.traces_audit(since=since, progress=self._progress)
        self._report_traces(traces)
        if repair and not traces.ok:
            closed = delivery.turn_close_abandoned()
            written = chat_audit.traces_repair(traces, progress=self._progress)
            self.stdout.write(f"repaired: {written} trace(s) written, {len(closed)} turn(s) closed")
            traces = chat_audit.traces_audit(since=since, progress=None)
            self._report_traces(traces, again=True)

        feedback = feedback_audit.feedback_audit(since=since, progress=self._progress)
        self._report_feedback(feedback)
        if repair and not feedback.ok:
            landed = feedback_audit.feedback_repair(feedback)
            self.stdout.write(f"repaired: {landed} feedback delivered again")
            feedback = feedback_audit.feedback_audit(since=since, progress=None)
            self._report_feedback(feedback, again=True)
        return traces.ok and feedback.ok

    def _progress(self, what: str, done: int, of: int) -> None:
        if done == of or done % 500 == 0:
            self.stdout.write(f"  [{done}/{of}] {what}")

    def _report_traces(self, audit: chat_audit.TraceAudit, *, again: bool = False) -> None:
        head = "after repair: " if again else ""
        self.stdout.write(
            f"{head}traces: {audit.checked} checked in MLflow, {len(audit.problems)} wrong or "
            f"missing, {audit.pending} waiting for delivery ({len(audit.overdue)} for over a "
            f"minute), {len(audit.failed)} failed, {audit.sampled_out} sampled out (kept, not "
            f"written), {len(audit.without_turn)} without a turn, "
            f"{len(audit.abandoned_turns)} abandoned turn(s)"
        )
        acc = audit.accounting
        self.stdout.write(
            f"{head}turns: {acc['answered']} answered = {acc['traced']} traced "
            f"({acc['in_mlflow']} in MLflow, {acc['pending']} waiting, {acc['failed']} failed; "
            f"{acc['written_late']} written late) + {acc['sampled_out']} sampled out + "
            f"{acc['untraced']} untraced"
            + (f" + {acc['unaccounted']} whose trace row is gone" if acc["unaccounted"] else "")
        )
        for trace_id, problem in list(audit.problems.items())[:20]:
            self.stdout.write(f"  {trace_id}: {problem}")
        for trace_id in audit.without_turn[:20]:
            self.stdout.write(f"  {trace_id}: in MLflow, no turn in the database (left alone)")

    def _report_feedback(self, audit: feedback_audit.FeedbackAudit, *, again: bool = False) -> None:
        head = "after repair: " if again else ""
        self.stdout.write(
            f"{head}feedback: {audit.checked} checked in MLflow, {len(audit.problems)} differ, "
            f"{audit.pending} waiting for delivery ({len(audit.overdue)} for over five minutes), "
            f"{len(audit.failed)} failed"
        )
        for feedback_id, problem in list(audit.problems.items())[:20]:
            self.stdout.write(f"  feedback {feedback_id}: {problem}")
