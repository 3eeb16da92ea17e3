from collections import Counter

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chatproject.commands import parse_when, summary
from quality import selectors, services
from quality.models import Rule


class Command(BaseCommand):
    help = (
        "Quality rules. `rules list`: each rule and how many turns it matched. "
        "`rules apply --rule NAME [--since DATE]`: apply a rule to past turns, in batches, with "
        "progress (safe to repeat: nothing is acted on twice). `rules match`: one worker pass "
        "over new votes."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        sub.add_parser("list", help="rules and their match counts")
        apply = sub.add_parser("apply", help="apply a rule to past turns")
        apply.add_argument("--rule", required=True, help="the rule's name")
        apply.add_argument("--since", help="only turns created since this date or ISO time")
        apply.add_argument("--batch", type=int, default=500, help="turns per batch (default 500)")
        sub.add_parser("match", help="match new votes once, as the feedback worker does")

    def handle(self, *args, verb: str, **options):
        getattr(self, f"_{verb}")(**options)

    def _list(self, **options) -> None:
        for rule in Rule.objects.order_by("name"):
            state = "enabled" if rule.enabled else "disabled"
            self.stdout.write(f"{rule.name}: {state}, {rule.matches.count()} match(es)")

    def _apply(self, *, rule: str, since: str | None, batch: int, **options) -> None:
        try:
            found = Rule.objects.get(name=rule)
        except Rule.DoesNotExist:
            raise CommandError(f"no rule named {rule!r}") from None
        when = parse_when(since, "--since")
        if when is not None and timezone.is_naive(when):
            when = timezone.make_aware(when)
        todo = selectors.rule_unmatched_turns(rule=found)
        if when:
            todo = todo.filter(created_at__gte=when)
        total = todo.count()
        self.stdout.write(f"rule {found.name!r}: {total} past turn(s) to look at")

        def progress(last_id: int, counts: Counter) -> None:
            done = counts["matched"] + counts["sampled_out"] + counts["seen"]
            self.stdout.write(f"  [{done}/{total}] up to turn {last_id}: {summary(counts)}")

        counts, _ = services.rule_apply(rule=found, since=when, batch=batch, progress=progress)
        self.stdout.write(
            self.style.SUCCESS(
                f"acted on {counts['matched']} turn(s); {counts['sampled_out']} left out by "
                f"sampling (rate {found.sample_rate})"
            )
        )

    def _match(self, **options) -> None:
        counts = services.rules_match_new()
        self.stdout.write(summary(counts))
