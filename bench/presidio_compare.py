"""Masking one turn's trace text: Microsoft Presidio's recognisers vs chat/tracing/redaction.py.

    python3.11 -m venv /tmp/presidio && /tmp/presidio/bin/pip install presidio-analyzer==2.2.366
    /tmp/presidio/bin/python bench/presidio_compare.py

Not a dependency of the project, so it runs in a throwaway environment. Presidio's analyzer engine
needs a spaCy language model, and spaCy's official models are not on PyPI (only re-uploads by
third parties): `AnalyzerEngine()` tries to download one and fails here. What can be measured is
its three pattern recognisers for these entities on their own (no NLP artefacts), which is a lower
bound of what the engine would cost. tldextract (used by its e-mail check) is kept offline.
"""

import importlib.util
import statistics
import time
from pathlib import Path

MESSAGE = (
    "Hi, I'm jane.doe@example.com (phone +44 20 7946 0958). My card 4111 1111 1111 1111 was "
    "charged twice for order 12345678; question 5: when does the refund arrive? "
)
REPLY = (
    f"You asked: “{MESSAGE}”. The key points I see are: jane, example, phone, card, charged. "
    f"This is message 3 of our conversation; earlier you said: “{MESSAGE[:120]}”. I am the "
    "local responder (no model server configured), so I can only reflect your question back."
)
TEXT = (MESSAGE + REPLY) * 10  # about what a turn with a full 10-turn history carries


def p50(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    started = time.perf_counter()
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        PhoneRecognizer,
    )

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    print(f"import presidio_analyzer: {time.perf_counter() - started:.2f} s")
    recognisers = [
        (EmailRecognizer(), ["EMAIL_ADDRESS"]),
        (PhoneRecognizer(), ["PHONE_NUMBER"]),
        (CreditCardRecognizer(), ["CREDIT_CARD"]),
    ]

    def presidio() -> str:
        found = [f for r, entities in recognisers for f in r.analyze(TEXT, entities, None)]
        out = TEXT
        for f in sorted(found, key=lambda f: -f.start):
            out = f"{out[: f.start]}<{f.entity_type}>{out[f.end :]}"
        return out

    path = Path(__file__).resolve().parent.parent / "chat" / "tracing" / "redaction.py"
    spec = importlib.util.spec_from_file_location("redaction", path)
    redaction = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(redaction)

    print(f"text: {len(TEXT)} characters")
    print(f"presidio recognisers p50: {p50(presidio, 30):8.2f} ms")
    print(f"our regexes p50:          {p50(lambda: redaction.redact_text(TEXT), 300):8.2f} ms")


if __name__ == "__main__":
    main()
