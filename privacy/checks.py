"""System checks of the privacy settings (`manage.py check`, and every start)."""

from django.conf import settings
from django.core import checks


@checks.register()
def traces_do_not_outlive_conversations(app_configs, **kwargs) -> list[checks.CheckMessage]:
    conversations = settings.CONVERSATION_RETENTION_DAYS
    traces = settings.TRACE_RETENTION_DAYS
    if conversations and (traces is None or traces > conversations):
        return [
            checks.Warning(
                f"CONVERSATION_RETENTION_DAYS={conversations} but TRACE_RETENTION_DAYS="
                f"{traces or '(off)'}: a conversation's traces (its messages, in MLflow) are "
                "kept after the conversation is deleted.",
                hint="Set TRACE_RETENTION_DAYS to at most CONVERSATION_RETENTION_DAYS.",
                id="privacy.W001",
            )
        ]
    return []
