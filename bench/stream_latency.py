"""Time to the first streamed token vs the full reply, for a ~200-token local-responder answer.

    .venv/bin/python bench/stream_latency.py [--turns 20] [--delay-ms 15]

Streams through the real DRF view (SSE), tracing on, the local responder paced at --delay-ms
per word as `make run` sets it. The question is sized so each answer is about 200 tokens.
"""

import argparse
import os
import time

from _setup import boot_django, percentile, token_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=15.0)
    args = parser.parse_args()
    os.environ["LLM_LOCAL_TOKEN_DELAY_MS"] = str(args.delay_ms)
    boot_django()
    from chat.models import Turn

    _, client = token_client("bench-stream")
    words = " ".join(f"detail{i}" for i in range(136))
    first, full, tokens = [], [], []
    for i in range(args.turns):
        started = time.perf_counter()
        response = client.post(
            "/api/chat/",
            {"message": f"Please explain {words} number {i}", "stream": True},
            format="json",
        )
        got_first = None
        for chunk in response.streaming_content:
            if got_first is None and b"event: token" in chunk:
                got_first = time.perf_counter()
        first.append((got_first - started) * 1000)
        full.append((time.perf_counter() - started) * 1000)
        tokens.append(Turn.objects.latest("id").completion_tokens)
    print(f"answers: {args.turns}, completion tokens p50 {percentile(tokens, 50)}")
    print(f"time to first token p50 {percentile(first, 50):8.1f} ms")
    print(f"full reply          p50 {percentile(full, 50):8.1f} ms")
    print(f"first/full ratio: {percentile(first, 50) / percentile(full, 50):.3f}")


if __name__ == "__main__":
    main()
