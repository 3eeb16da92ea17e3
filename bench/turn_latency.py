"""p50/p90 latency of one chat turn with MLflow tracing on vs off, local responder, one run.

    .venv/bin/python bench/turn_latency.py [--turns 300]

Turns go through the real DRF stack (token auth, ORM, LLM seam, tracing) in-process; a traced
turn records its trace and stores it with the answer (one more row in the same transaction);
writing it to MLflow is the delivery process's work, not the request's, so it is not timed here
(bench/load.py measures the whole path). On and off alternate in blocks so machine noise hits
both alike.
"""

import argparse
import time

from _setup import boot_django, percentile, token_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="turns per mode")
    parser.add_argument("--block", type=int, default=25)
    args = parser.parse_args()

    boot_django()
    from django.conf import settings

    from chat import tracing

    _, client = token_client("bench")
    timings: dict[bool, list[float]] = {True: [], False: []}
    session_id = {}

    def turn(traced: bool, i: int) -> None:
        body = {"message": f"Benchmark question number {i} about my order"}
        if traced in session_id:
            body["session_id"] = session_id[traced]
        started = time.perf_counter()
        response = client.post("/api/chat/", body, format="json")
        timings[traced].append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
        data = response.json()
        assert (data["trace_id"] is not None) == traced
        session_id.setdefault(traced, data["session_id"])

    for traced in (True, False):  # warm-up: imports, first MLflow writes
        settings.TRACING_ENABLED = traced
        tracing.configure()
        for i in range(10):
            turn(traced, i)
        timings[traced].clear()

    done = 0
    while done < args.turns:
        for traced in (True, False):
            settings.TRACING_ENABLED = traced
            tracing.configure()
            for i in range(args.block):
                turn(traced, done + i)
        done += args.block
        print(f"  {done}/{args.turns} turns per mode", flush=True)

    on, off = timings[True], timings[False]
    print(f"turns per mode: {len(on)}  (history window {settings.CHAT_HISTORY_TURNS} turns)")
    print(f"{'':14}{'p50 ms':>9}{'p90 ms':>9}")
    for label, values in (("tracing on", on), ("tracing off", off)):
        print(f"{label:14}{percentile(values, 50):9.2f}{percentile(values, 90):9.2f}")
    ratio = percentile(on, 50) / percentile(off, 50)
    print(f"p50 on/off ratio: {ratio:.2f}x  (+{percentile(on, 50) - percentile(off, 50):.2f} ms)")


if __name__ == "__main__":
    main()
