import csv
import io
import json

from django.core.management.base import BaseCommand, CommandError
from django.http import QueryDict
from rest_framework.exceptions import ValidationError

from chat import tracing
from chat.apis import TraceSearchApi, trace_query_from

COLUMNS = ["trace_id", "time", "duration_ms", "state", "user", "session", "client_request_id"]


class Command(BaseCommand):
    help = "Search this app's MLflow traces, e.g. `traces search --user alice --tag team=support`"

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

    def handle(self, *args, **opts):
        params = QueryDict(mutable=True)
        for name in (
            "user",
            "session",
            "client_request_id",
            "environment",
            "app_version",
            "since",
            "until",
        ):
            if opts.get(name):
                params[name] = opts[name]
        params.setlist("tag", [t.replace("=", ":", 1) for t in opts["tag"]])
        params.setlist("feedback", opts["feedback"])
        params["ordering"] = opts["order"]
        params["page_size"] = str(min(max(opts["limit"], 1), 200))
        serializer = TraceSearchApi.FilterSerializer(data=params)
        try:
            serializer.is_valid(raise_exception=True)
            query = trace_query_from(serializer.validated_data)
        except ValidationError as exc:
            raise CommandError(f"invalid filter: {exc.detail}") from exc
        if not tracing.is_ready():
            raise CommandError("MLflow is not reachable (see MLFLOW_TRACKING_URI)")
        traces = [] if query is None else self._collect(query, opts)
        getattr(self, f"_write_{opts['format']}")(traces)
        if opts["format"] == "table":
            self.stderr.write(f"{len(traces)} trace(s)")

    def _collect(self, query, opts) -> list:
        found, token = [], None
        while len(found) < opts["limit"]:
            try:
                page = tracing.search_traces(
                    query, order=opts["order"], page_token=token, page_size=min(opts["limit"], 200)
                )
            except tracing.TrackingUnavailable as exc:
                raise CommandError(f"MLflow did not answer: {exc}") from exc
            found += page.traces
            token = page.next_page_token
            if not token:
                break
        return found[: opts["limit"]]

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
