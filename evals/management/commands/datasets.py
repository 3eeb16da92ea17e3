from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat import tracing
from chat.models import Turn
from chatproject.commands import parse_when
from evals import selectors, services
from evals.exceptions import EvalsError


def _clip(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Command(BaseCommand):
    help = (
        "Versioned evaluation datasets: `list`, `add NAME --turn ID` (stage turns for the next "
        "version), `freeze NAME` (make it), `tag NAME prod v2`, `diff NAME v1 v2`, "
        "`sync [NAME]` (copy versions to MLflow)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="datasets, their versions, tags and staged turns")
        add = sub.add_parser("add", help="stage turns for a dataset's next version")
        add.add_argument("name")
        add.add_argument("--turn", type=int, action="append", default=[], help="turn id")
        add.add_argument(
            "--corrected",
            action="store_true",
            help="every turn with a staff correction not staged or in the latest version",
        )
        add.add_argument("--since", help="with --corrected: turns from this time on (ISO 8601)")
        add.add_argument("--reason", default="", help="why (default: the command and your user)")
        add.add_argument("--freeze", action="store_true", help="freeze the next version after")
        add.add_argument("--by", help="username recorded as the version's maker (--freeze)")
        freeze = sub.add_parser("freeze", help="make the next version (previous + corrected)")
        freeze.add_argument("name")
        freeze.add_argument("--note", default="")
        freeze.add_argument("--remove", action="append", default=[], help="record key to drop")
        freeze.add_argument("--by", help="username recorded as the version's maker")
        tag = sub.add_parser("tag", help="point a named tag (prod, candidate) at a version")
        tag.add_argument("name")
        tag.add_argument("tag")
        tag.add_argument("version", help="vN")
        tag.add_argument("--by", help="username recorded as the mover")
        diff = sub.add_parser("diff", help="what changed between two versions")
        diff.add_argument("name")
        diff.add_argument("old", help="vN or a tag")
        diff.add_argument("new", help="vN or a tag")
        sync = sub.add_parser("sync", help="copy versions (and tags) to MLflow")
        sync.add_argument("name", nargs="?", help="one dataset (default: all)")

    def handle(self, *args, **opts):
        try:
            getattr(self, f"_{opts['action']}")(opts)
        except EvalsError as exc:
            raise CommandError(str(exc)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    def _user(self, username: str | None):
        if not username:
            return None
        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"--by: no user {username!r}") from None

    def _list(self, opts) -> None:
        from evals.models import Dataset

        for dataset in Dataset.objects.prefetch_related("versions", "tags__version"):
            tags = ", ".join(f"{t.name}→v{t.version.number}" for t in dataset.tags.all())
            self.stdout.write(
                f"{dataset.name}: {dataset.staged.count()} staged"
                + (f"; tags {tags}" if tags else "")
            )
            for version in dataset.versions.all():
                self.stdout.write(
                    f"  v{version.number}  {version.record_count} records  "
                    f"{version.created_at:%Y-%m-%d %H:%M}  {_clip(version.note, 50)}"
                )

    def _add(self, opts) -> None:
        name = opts["name"]
        turns = list(Turn.objects.filter(pk__in=opts["turn"]))
        missing = set(opts["turn"]) - {t.pk for t in turns}
        if missing:
            raise CommandError(f"no turn {', '.join(map(str, sorted(missing)))}")
        if opts["corrected"]:
            dataset = services.dataset_get_or_create(name=name)
            since = parse_when(opts["since"], "--since")
            turns += list(selectors.corrected_turns_outside(dataset=dataset, since=since))
        if not turns and not opts["freeze"]:
            raise CommandError("nothing to add: give --turn ID or --corrected")
        reason = opts["reason"] or "manage.py datasets add"
        staged = 0
        for done, turn in enumerate(turns, 1):
            staged += services.dataset_stage(dataset_name=name, turn=turn, reason=reason)
            if done % 100 == 0 or done == len(turns):
                self.stdout.write(f"  staged {done}/{len(turns)}")
        self.stdout.write(f"{name}: {staged} turn(s) staged, {len(turns) - staged} already staged")
        if opts["freeze"]:
            self._freeze({**opts, "note": "", "remove": []})

    def _freeze(self, opts) -> None:
        dataset = selectors.dataset_get(name=opts["name"])

        def progress(done: int, of: int) -> None:
            self.stdout.write(f"  read {done}/{of} staged turns")

        made = services.dataset_version_create(
            dataset=dataset,
            created_by=self._user(opts["by"]),
            note=opts["note"],
            remove_keys=opts["remove"],
            progress=progress,
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"{made.version}: {made.version.record_count} records ({made.added} added, "
                f"{made.changed} changed, {made.removed} removed, {made.kept} kept)"
            )
        )
        if made.waiting:
            self.stdout.write(
                f"{made.waiting} staged turn(s) have no staff correction yet and stay staged"
            )

    def _tag(self, opts) -> None:
        version, _ = selectors.version_resolve(ref=f"{opts['name']}@{opts['version']}")
        tag = services.dataset_tag_move(
            dataset=version.dataset,
            name=opts["tag"],
            version=version,
            moved_by=self._user(opts["by"]),
        )
        self.stdout.write(self.style.SUCCESS(f"{version.dataset.name}@{tag.name} → {version}"))

    def _diff(self, opts) -> None:
        old, _ = selectors.version_resolve(ref=f"{opts['name']}@{opts['old']}")
        new, _ = selectors.version_resolve(ref=f"{opts['name']}@{opts['new']}")
        diff = selectors.dataset_diff(old=old, new=new)
        self.stdout.write(diff.summary)
        for record in diff.added:
            self.stdout.write(f"+ {record.key}  {_clip(record.question)}")
            self.stdout.write(f"    expect: {_clip(record.expectation)}")
        for record in diff.removed:
            self.stdout.write(f"- {record.key}  {_clip(record.question)}")
        for before, after in diff.changed:
            self.stdout.write(f"~ {after.key}  {_clip(after.question)}")
            self.stdout.write(f"    was:    {_clip(before.expectation)}")
            self.stdout.write(f"    now:    {_clip(after.expectation)}")

    def _sync(self, opts) -> None:
        from evals.models import Dataset

        if not tracing.is_ready():
            raise CommandError("MLflow is not reachable (see MLFLOW_TRACKING_URI); nothing synced")
        chosen = (
            [selectors.dataset_get(name=opts["name"])] if opts["name"] else Dataset.objects.all()
        )
        for dataset in chosen:
            try:
                results = services.dataset_sync(dataset=dataset, progress=self.stdout.write)
            except tracing.TrackingUnavailable as exc:
                raise CommandError(f"MLflow failed during the sync of {dataset}: {exc}") from exc
            for r in results:
                state = "written" if r.merged else "up to date"
                self.stdout.write(
                    f"{r.version} → MLflow dataset {r.mlflow_name!r}: {r.records} records ({state})"
                )
                if r.records < r.version.record_count:
                    self.stdout.write(
                        f"  {r.version.record_count - r.records} record(s) share their inputs "
                        "with another and are one record in MLflow"
                    )
