import csv
import io
import json
import re
import uuid
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat import delivery, selectors, tracing
from chat.exceptions import TracesUnavailable
from chat.models import REQUEST_ID_PATTERN, Turn
from chatproject.commands import parse_when

DURATION = re.compile(r"^(\d+)([smhd])\Z")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

COLUMNS = ["trace_id", "time", "duration_ms", "state", "user", "session", "client_request_id"]


def _pair(value: str, sep: str, option: str) -> tuple[str, str]:
    key, found, val = value.partition(sep)
    if not found or not key:
        raise CommandError(f"{option} {value!r}: expected key{sep}value")
    return key, val


class Command(BaseCommand):
    help = (
        "Search this app's MLflow traces (`traces search --user alice --tag team=support`), or "
        "write turns' traces to MLflow now, sampled-out ones included (`traces write --turn 42`)"
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        search = sub.add_parser("search", help="find traces by user, session, request id, ...")
        search.add_argument("--user", help="user id or username")
        search.add_argument("--session", help="conversation (session) id")
        search.add_argument("--request-id", dest="client_request_id")
        search.add_argument("--tag", action="append", default=[], help="k=v (repeatable)")
        search.add_argument("--environment")
        search.add_argument("--app-version", dest="app_version")
        search.add_argument(
            "--feedback",
            action="append",
            default=[],
            help="name:value, e.g. response_is_correct:false",
        )
        search.add_argument("--since", help="ISO 8601")
        search.add_argument("--until", help="ISO 8601")
        search.add_argument("--order", default="-time", choices=sorted(tracing.ORDERINGS))
        search.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
        search.add_argument("--format", default="table", choices=["table", "json", "csv"])
        write = sub.add_parser(
            "write",
            help="write turns' traces to MLflow now, sampled-out ones too (tagged "
            "trace.written_late=requested)",
        )
        write.add_argument("--turn", type=int, action="append", default=[], help="turn id")
        write.add_argument("--session", action="append", default=[], help="conversation id")
        write.add_argument(
            "--since", dest="since", help="turns of the last DURATION (30m, 12h, 7d) or ISO 8601"
        )

    def handle(self, *args, **opts):
        if opts["action"] == "write":
            return self._write(opts)
        request_id = opts["client_request_id"]
        if request_id and not REQUEST_ID_PATTERN.fullmatch(request_id):
            raise CommandError("--request-id: 1-50 characters of letters, digits and . _ : -")
        if not tracing.is_ready():
            raise CommandError("MLflow is not reachable (see MLFLOW_TRACKING_URI)")
        filters = {
            "user": opts["user"],
            "session_id": opts["session"],
            "client_request_id": request_id,
            "tags": [_pair(t, "=", "--tag") for t in opts["tag"]],
            "environment": opts["environment"],
            "app_version": opts["app_version"],
            "feedback": [_pair(f, ":", "--feedback") for f in opts["feedback"]],
            "since": parse_when(opts["since"], "--since"),
            "until": parse_when(opts["until"], "--until"),
            "order": opts["order"],
        }
        traces = self._collect(filters, limit=max(opts["limit"], 1))
        getattr(self, f"_write_{opts['format']}")(traces)
        if opts["format"] == "table":
            self.stderr.write(f"{len(traces)} trace(s)")

    def _write(self, opts: dict) -> None:
        if not (opts["turn"] or opts["session"] or opts["since"]):
            raise CommandError("say which turns: --turn ID, --session ID or --since DURATION")
        turns = Turn.objects.none()
        if opts["turn"]:
            turns |= Turn.objects.filter(pk__in=opts["turn"])
        if opts["session"]:
            try:
                sessions = [uuid.UUID(value) for value in opts["session"]]
            except ValueError as exc:
                raise CommandError(f"--session: not a conversation id ({exc})") from None
            turns |= Turn.objects.filter(session_id__in=sessions)
        if opts["since"]:
            turns |= Turn.objects.filter(created_at__gte=self._since(opts["since"]))
        if not tracing.is_ready():
            raise CommandError("MLflow is not reachable (see MLFLOW_TRACKING_URI)")
        result = delivery.traces_write(turns=turns.distinct(), progress=self._progress)
        self.stdout.write(
            f"{result.turns} turn(s): {result.asked} sampled-out trace(s) asked for; "
            f"{result.written} in MLflow, {result.waiting} waiting for the delivery worker, "
            f"{result.failed} refused, {result.untraced} without a trace"
        )
        if result.waiting or result.failed:
            raise CommandError("not every trace is in MLflow yet (see above)", returncode=1)
        self.stdout.write(self.style.SUCCESS("every trace asked for is in MLflow"))

    def _since(self, value: str):
        match = DURATION.fullmatch(value)
        if match:
            return timezone.now() - timedelta(**{UNITS[match[2]]: int(match[1])})
        try:
            return parse_when(value, "--since")
        except CommandError:
            raise CommandError(
                f"--since {value!r}: expected a duration (30m, 12h, 7d) or ISO 8601"
            ) from None

    def _progress(self, done: int, of: int) -> None:
        self.stdout.write(f"  [{done}/{of}] written")

    def _collect(self, filters: dict, *, limit: int) -> list:
        found, cursor = [], None
        while len(found) < limit:
            try:
                page = selectors.trace_search(**filters, cursor=cursor, page_size=min(limit, 200))
            except tracing.UnsafeFilterValue as exc:
                raise CommandError(f"invalid filter: {exc}") from exc
            except TracesUnavailable as exc:
                raise CommandError(f"MLflow did not answer: {exc.message}") from exc
            found += page.traces
            cursor = page.next_page_token
            if not cursor:
                break
        return found[:limit]

    def _rows(self, traces):
        for t in traces:
            yield {
                "trace_id": t.trace_id,
                "time": t.time.isoformat(timespec="seconds"),
                "duration_ms": t.duration_ms,
                "state": t.state,
                "user": t.user,
                "session": t.session,
                "client_request_id": t.client_request_id,
                "feedback": t.feedback,
                "request_preview": t.request_preview,
                "response_preview": t.response_preview,
                "tags": t.tags,
                "url": t.url,
            }

    def _write_json(self, traces) -> None:
        self.stdout.write(json.dumps(list(self._rows(traces)), indent=2, default=str))

    def _write_csv(self, traces) -> None:
        fields = COLUMNS + ["feedback", "request_preview", "url"]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in self._rows(traces):
            writer.writerow({**row, "feedback": json.dumps(row["feedback"])})
        self.stdout.write(out.getvalue(), ending="")

    def _write_table(self, traces) -> None:
        rows = [
            [str(r[c] if r[c] is not None else "") for c in COLUMNS] + [json.dumps(r["feedback"])]
            for r in self._rows(traces)
        ]
        header = COLUMNS + ["feedback"]
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
        for row in [header] + rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
