import sys

from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def _create_cache_table(sender, using: str = "default", **kwargs) -> None:
    # The database cache (throttle counts) needs its table; `migrate` is the one set-up step
    # every deployment already runs, so it makes the table too (a no-op when it exists).
    call_command("createcachetable", database=using, verbosity=0)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_create_cache_table, sender=self)
        # Commands that never trace (migrations, shells for schema work) skip MLflow set-up.
        if any(cmd in sys.argv for cmd in ("makemigrations", "migrate", "collectstatic", "check")):
            return
        from chat import tracing

        tracing.configure()
