"""What TRACE_REDACT_PII costs: a turn on vs off, the deliverer's work per trace, masking alone.

    .venv/bin/python bench/redaction.py [--turns 300]

Turns go through the real DRF stack in-process (token auth, ORM, local responder, tracing on)
with a message that carries an e-mail address, a phone number and a card number, in one
conversation, so the LLM span's input grows to the full history window as it would in
production. The masking is not on the request path: a turn's row names its messages, and the
deliverer masks the trace as it fills them in (`selectors.trace_payloads`), so a turn should cost
the same either way. On and off alternate in blocks so machine noise hits both alike. Then the
deliverer's completion of each recorded row is timed, masking on and off (each process masks a
text once: the cache is cleared per trace, as for a deliverer that has not seen the
conversation), and the masking of one completed payload alone, nothing cached.
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

    from chat import selectors
    from chat.models import TraceExport
    from chat.tracing import redaction

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

    done = 0
    while done < args.turns:
        for redacting in (True, False):
            settings.TRACE_REDACT_PII = redacting
            for i in range(args.block):
                turn(redacting, done + i)
        done += args.block
        print(f"  {done}/{args.turns} turns per mode", flush=True)

    # The deliverer's work per row: fill in the messages it names, mask (or not), clip.
    rows = list(TraceExport.objects.order_by("-id")[: args.turns])
    complete_ms: dict[bool, list[float]] = {True: [], False: []}
    for redacting in (True, False):
        settings.TRACE_REDACT_PII = redacting
        for row in rows:
            redaction.redact_text.cache_clear()
            started = time.perf_counter()
            selectors.trace_payloads([row])
            complete_ms[redacting].append((time.perf_counter() - started) * 1000)

    # Masking alone, on one completed unmasked payload with a full history.
    settings.TRACE_REDACT_PII = False
    payload = selectors.trace_payloads(rows[:1])[0]
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
    c_on, c_off = complete_ms[True], complete_ms[False]
    print(
        f"deliverer, completing one row p50: {percentile(c_on, 50):.3f} ms masked, "
        f"{percentile(c_off, 50):.3f} ms not (one query for its messages included)"
    )
    size = sum(len(str(s)) for s in payload["spans"])
    print(
        f"masking one payload alone ({len(payload['spans'])} spans, ~{size} chars): "
        f"p50 {statistics.median(runs):.3f} ms, p90 {percentile(runs, 90):.3f} ms"
    )


if __name__ == "__main__":
    main()
