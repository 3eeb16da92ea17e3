"""With TRACE_REDACT_PII on, no e-mail address, phone or card number leaves in a trace."""

import json

import pytest

from chat.models import TraceExport
from chat.tracing.redaction import redact, redact_text

pytestmark = pytest.mark.django_db

PII_MESSAGE = (
    "I am jane.doe+shop@example.co.uk, call me on +44 20 7946 0958 or (555) 123-4567; "
    "my card 4111 1111 1111 1111 was charged twice for order 12345678 on 2026-11-01."
)
PII_VALUES = [
    "jane.doe+shop@example.co.uk",
    "+44 20 7946 0958",
    "(555) 123-4567",
    "4111 1111 1111 1111",
    "4111111111111111",
    "7946 0958",
    "123-4567",
]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to a.b-c@mail.example.org today", "write to [EMAIL] today"),
        ("call +1 (415) 555-0123.", "call [PHONE]."),
        ("call +33612345678", "call [PHONE]"),
        ("call 555-123-4567 or 555.123.4567", "call [PHONE] or [PHONE]"),
        ("bureau 06 12 34 56 78", "bureau [PHONE]"),
        ("card 4111-1111-1111-1111!", "card [CARD]!"),
        ("amex 378282246310005", "amex [CARD]"),
    ],
)
def test_personal_data_is_masked(text, masked):
    assert redact_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the Luhn check",
        "order 12345678 of 2026-11-01 at 10:30",
        "server 192.168.100.200 answered",
        "session 12345678-1234-5678-1234-123456789012",
        "request req-5551234567",
        "version 3.17.2, 1,000,000 tokens, 42 apples",
        "an @ sign alone, user@localhost",
    ],
)
def test_look_alikes_are_left_alone(text):
    assert redact_text(text) == text


def test_redaction_walks_nested_data_and_keeps_keys_and_ids():
    data = {
        "messages": [{"role": "user", "content": "mail me: x@example.com"}],
        "session_id": "x@example.com",
        "usage": {"total_tokens": 5551234567},
        "flag": True,
    }
    assert redact(data) == {
        "messages": [{"role": "user", "content": "mail me: [EMAIL]"}],
        "session_id": "x@example.com",
        "usage": {"total_tokens": 5551234567},
        "flag": True,
    }


def test_a_preview_is_masked_before_it_is_clipped(settings, api, get_trace):
    settings.TRACE_REDACT_PII = True
    message = "x" * 990 + " jane@example.com"  # the 1,000-character clip would cut the address
    body = api.post("/api/chat/", {"message": message}, format="json").json()
    preview = get_trace(body["trace_id"]).info.request_preview
    assert preview.endswith("[EMAIL]") and "jane" not in preview


def _everything_mlflow_has(trace) -> str:
    info = trace.info
    parts = [info.request_preview, info.response_preview, trace.data.request, trace.data.response]
    for span in trace.data.spans:
        parts += [json.dumps(span.inputs), json.dumps(span.outputs), json.dumps(span.attributes)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_a_turn_with_personal_data_reaches_mlflow_and_the_database_masked(
    stream, settings, api, llm_server, get_trace
):
    settings.TRACE_REDACT_PII = True
    first = api.post("/api/chat/", {"message": PII_MESSAGE}, format="json").json()
    # A second turn: the first one's text is now in the history sent to the LLM (its span input).
    response = api.post(
        "/api/chat/",
        {"message": "and jane@example.org?", "session_id": first["session_id"], "stream": stream},
        format="json",
    )
    assert response.status_code == 200
    # The person and the LLM still see what was written: only the trace is masked.
    assert llm_server.chat_requests()[-1]["messages"][1]["content"] == PII_MESSAGE

    for export in TraceExport.objects.all():
        stored = json.dumps(export.payload)
        assert not [v for v in PII_VALUES if v in stored], stored
        assert "jane@example.org" not in stored
        trace = get_trace(export.trace_id)
        seen = _everything_mlflow_has(trace)
        assert not [v for v in PII_VALUES if v in seen], seen
        assert "jane@example.org" not in seen

    trace = get_trace(first["trace_id"])
    assert trace.info.request_preview == (
        "I am [EMAIL], call me on [PHONE] or [PHONE]; my card [CARD] was charged twice for "
        "order 12345678 on 2026-11-01."
    )
    spans = {s.name: s for s in trace.data.spans}
    assert spans["chat_turn"].inputs["messages"][0]["content"] == trace.info.request_preview
    assert spans["llm"].inputs["messages"][-1]["content"] == trace.info.request_preview
    assert "[EMAIL]" in spans["llm"].outputs["choices"][0]["message"]["content"]
    assert "[CARD]" in trace.info.response_preview
    # Ids are not content: the trace is still found by its request id and session.
    assert spans["chat_turn"].inputs["session_id"] == first["session_id"]
    assert trace.info.client_request_id == first["client_request_id"]


def test_with_the_setting_off_a_trace_keeps_what_was_written(settings, api, get_trace):
    settings.TRACE_REDACT_PII = False
    body = api.post("/api/chat/", {"message": PII_MESSAGE}, format="json").json()
    trace = get_trace(body["trace_id"])
    assert trace.info.request_preview == PII_MESSAGE
    spans = {s.name: s for s in trace.data.spans}
    assert spans["llm"].inputs["messages"][-1]["content"] == PII_MESSAGE
    assert "jane.doe+shop@example.co.uk" in spans["llm"].outputs["choices"][0]["message"]["content"]


def test_redaction_is_off_by_default():
    from chatproject import settings as project_settings

    assert project_settings.TRACE_REDACT_PII is False
