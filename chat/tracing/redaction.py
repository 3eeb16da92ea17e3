"""Masking personal data (e-mail addresses, phone numbers, card numbers) in a recorded trace.

Applied by the deliverer as it completes a stored trace (`spans.complete_payload`) with
`TRACE_REDACT_PII` on, so what reaches MLflow never holds the values (the stored row names the
conversation's messages and holds none of their text).
Regular expressions rather than Microsoft Presidio: Presidio's recognisers for these three are
regular expressions too (plus a checksum), and it needs spaCy and a language model that cannot be
installed here; see docs/tracing.md for the measured cost per turn.
"""

from __future__ import annotations

import functools
import re
from typing import Any

EMAIL_MASK, PHONE_MASK, CARD_MASK = "[EMAIL]", "[PHONE]", "[CARD]"

# Values under these keys are identifiers the app chose or validated, not what someone wrote.
ID_KEYS = frozenset({"session_id", "client_request_id"})

# Bounded parts (RFC 5321's lengths) keep the scan linear on long text without an address.
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,63}"
)
# 13-19 digits, optionally grouped by single spaces or dashes; kept only if the Luhn check holds.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# "+" and a number in any grouping, or a national number of three or more groups
# ("555-123-4567", "(020) 7946 0958", "06 12 34 56 78"); never inside a word or a dashed id.
_PHONE = re.compile(
    r"(?<![\w+-])(?:"
    r"\+\d[\d .()-]{6,22}\d"
    r"|\(?\d{2,5}\)?(?:[ .-]\d{2,5}){2,5}"
    r")(?![\w-])"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Where a phone or card number could be (8 digits or more, with separators): it starts with a
# character class, so the scan is fast, and the precise patterns run on these stretches only.
_NUMBER_RUN = re.compile(r"[+(]?\d(?:[ .()-]*\d){7,}\)?")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD_MASK if _luhn_valid(digits) else match.group()


def _phone(match: re.Match) -> str:
    text = match.group()
    digits = sum(map(str.isdigit, text))
    international = text.startswith("+")
    if not (8 if international else 9) <= digits <= 15 or _IPV4.fullmatch(text):
        return text
    return PHONE_MASK


def _numbers(match: re.Match) -> str:
    run = match.group()
    # One character of context each side, for the patterns' word-boundary checks.
    text, start, end = match.string, match.start(), match.end()
    before, after = text[start - 1 : start] if start else "", text[end : end + 1]
    masked = _PHONE.sub(_phone, _CARD.sub(_card, before + run + after))
    return masked[len(before) : len(masked) - len(after)]


# A turn's trace holds each text about three times (root span, LLM span, preview) and the next
# turn's LLM span the whole history again: masked once per process, not once per appearance.
@functools.lru_cache(maxsize=512)
def redact_text(text: str) -> str:
    """The text with e-mail addresses, card numbers (Luhn-checked) and phone numbers masked."""
    if "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    return _NUMBER_RUN.sub(_numbers, text)


def redact(value: Any) -> Any:
    """A copy of JSON-like data with every string masked (keys and ids are kept as they are)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: v if k in ID_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
