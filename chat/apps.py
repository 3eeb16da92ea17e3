import sys

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Commands that never trace (migrations, shells for schema work) skip MLflow set-up.
        if any(cmd in sys.argv for cmd in ("makemigrations", "migrate", "collectstatic", "check")):
            return
        from chat import tracing

        tracing.configure()
