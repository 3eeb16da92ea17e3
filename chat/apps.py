import os
import sys

from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def _create_cache_table(sender, using: str = "default", **kwargs) -> None:
    # The database cache (throttle counts) needs its table; `migrate` is the one set-up step
    # every deployment already runs, so it makes the table too (a no-op when it exists).
    call_command("createcachetable", database=using, verbosity=0)


# `runserver` starts neither delivery worker (`make run` does); say so once, in the process that
# serves (with the autoreloader, the child it starts), so a Django developer's traces arrive.
RUNSERVER_HINT = (
    "Traces and feedback reach MLflow only through the delivery workers: run "
    "`python manage.py deliver_traces --loop` and `python manage.py deliver_feedback --loop` "
    "beside this server (or use `make run`, which starts them)."
)


def _is_runserver() -> bool:
    serving = os.environ.get("RUN_MAIN") == "true" or "--noreload" in sys.argv
    return sys.argv[1:2] == ["runserver"] and serving


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_create_cache_table, sender=self)
        if _is_runserver():
            sys.stderr.write(RUNSERVER_HINT + "\n")
        # Commands that never trace (migrations, shells for schema work) skip MLflow set-up.
        if any(cmd in sys.argv for cmd in ("makemigrations", "migrate", "collectstatic", "check")):
            return
        from chat import tracing

        tracing.configure()
