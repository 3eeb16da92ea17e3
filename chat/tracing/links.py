"""Links into the MLflow UI, for the admin, the API and the page."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.utils.html import format_html

from chat.tracing.setup import experiment_id


def trace_ui_url(trace_id: str | None) -> str | None:
    """A link to the trace in the MLflow UI, or None when there is no trace."""
    exp_id = experiment_id()
    if not trace_id or not exp_id:
        return None
    query = urlencode({"selectedEvaluationId": trace_id})
    return f"{settings.MLFLOW_UI_URL.rstrip('/')}/#/experiments/{exp_id}/traces?{query}"


def session_ui_url(session_id) -> str | None:
    """A link to the conversation's page (all its traces) in the MLflow UI."""
    exp_id = experiment_id()
    if not session_id or not exp_id:
        return None
    return f"{settings.MLFLOW_UI_URL.rstrip('/')}/#/experiments/{exp_id}/chat-sessions/{session_id}"


def ui_link_html(url: str | None, text: str):
    """An admin-safe link that opens in a new tab, or "-" when there is nothing to link to."""
    return format_html('<a href="{}" target="_blank">{}</a>', url, text) if url else "-"


def trace_link_html(trace_id: str | None):
    """The trace's id, linked to it in the MLflow UI."""
    return ui_link_html(trace_ui_url(trace_id), trace_id or "-")
