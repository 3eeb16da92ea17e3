"""p50/p90 latency of one chat turn with TRACE_REDACT_PII on vs off, and masking alone, one run.

    .venv/bin/python bench/redaction.py [--turns 300]

Turns go through the real DRF stack in-process (token auth, ORM, local responder, tracing on)
with a message that carries an e-mail address, a phone number and a card number, in one
conversation, so the LLM span's input grows to the full history window as it would in
production. Masking happens once per turn, when the trace is serialised for its row
(`TurnTrace.payload`), which is also timed on its own in every turn: on shared cores the whole
turn's p50 moves by a few ms from run to run, the serialisation's far less. On and off alternate
in blocks so machine noise hits both alike. The last figure is the masking of one recorded payload
on its own (`redact` over the spans and previews, nothing cached), without the request around it.
"""

import argparse
import statistics
import time

from _setup import boot_django, percentile, token_client

MESSAGE = (
    "Hi, I'm jane.doe@example.com (phone +44 20 7946 0958). My card 4111 1111 1111 1111 was "
    "charged twice for order 12345678; question {i}: when does the refund arrive?"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="turns per mode")
    parser.add_argument("--block", type=int, default=25)
    args = parser.parse_args()

    boot_django()
    from django.conf import settings

    from chat.models import TraceExport
    from chat.tracing import redaction, spans

    serialise_ms: dict[bool, list[float]] = {True: [], False: []}
    payload = spans.TurnTrace.payload

    def timed_payload(self):
        started = time.perf_counter()
        try:
            return payload(self)
        finally:
            serialise_ms[settings.TRACE_REDACT_PII].append((time.perf_counter() - started) * 1000)

    spans.TurnTrace.payload = timed_payload

    _, client = token_client("bench")
    timings: dict[bool, list[float]] = {True: [], False: []}
    session_id = {}

    def turn(redacting: bool, i: int) -> None:
        body = {"message": MESSAGE.format(i=i)}
        if redacting in session_id:
            body["session_id"] = session_id[redacting]
        started = time.perf_counter()
        response = client.post("/api/chat/", body, format="json")
        timings[redacting].append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
        session_id.setdefault(redacting, response.json()["session_id"])

    for redacting in (True, False):  # warm-up, and fill the history window
        settings.TRACE_REDACT_PII = redacting
        for i in range(settings.CHAT_HISTORY_TURNS + 5):
            turn(redacting, i)
        timings[redacting].clear()
        serialise_ms[redacting].clear()

    done = 0
    while done < args.turns:
        for redacting in (True, False):
            settings.TRACE_REDACT_PII = redacting
            for i in range(args.block):
                turn(redacting, done + i)
        done += args.block
        print(f"  {done}/{args.turns} turns per mode", flush=True)

    # Masking alone, on the payload of an unmasked turn (off runs last) with a full history.
    payload = TraceExport.objects.order_by("-id").first().payload
    assert "@" in payload["request_preview"]
    runs = []
    for _ in range(2000):
        redaction.redact_text.cache_clear()  # each text masked once, as in a process's first turn
        started = time.perf_counter()
        redaction.redact(payload["spans"])
        redaction.redact_text(payload["request_preview"])
        redaction.redact_text(payload["response_preview"])
        runs.append((time.perf_counter() - started) * 1000)

    on, off = timings[True], timings[False]
    print(f"turns per mode: {len(on)}  (history window {settings.CHAT_HISTORY_TURNS} turns)")
    print(f"{'':16}{'p50 ms':>9}{'p90 ms':>9}")
    for label, values in (("redaction on", on), ("redaction off", off)):
        print(f"{label:16}{percentile(values, 50):9.2f}{percentile(values, 90):9.2f}")
    ratio = percentile(on, 50) / percentile(off, 50)
    print(f"p50 on/off ratio: {ratio:.2f}x  (+{percentile(on, 50) - percentile(off, 50):.2f} ms)")
    s_on, s_off = serialise_ms[True], serialise_ms[False]
    extra = percentile(s_on, 50) - percentile(s_off, 50)
    print(
        f"trace serialisation per turn p50: {percentile(s_on, 50):.3f} ms on, "
        f"{percentile(s_off, 50):.3f} ms off (+{extra:.3f} ms per turn)"
    )
    size = sum(len(str(s)) for s in payload["spans"])
    print(
        f"masking one payload alone ({len(payload['spans'])} spans, ~{size} chars): "
        f"p50 {statistics.median(runs):.3f} ms, p90 {percentile(runs, 90):.3f} ms"
    )


if __name__ == "__main__":
    main()
