"""CPU of one chat turn in the app's own code: the ASGI application in-process, one run.

    .venv/bin/python bench/turn_cpu.py [--turns 400] [--block 50]
    .venv/bin/python bench/turn_cpu.py --model fake [--stream]


Each turn goes through what a served turn goes through past uvicorn: the door, Django's ASGI
handler and middleware, the async DRF view, its ORM units on the unit threads (SQLite), the local
responder with no token delay, the trace and its row. No HTTP, no model time, one turn at a
time: what is left is the CPU the app spends per turn, the figure that decides how many turns/s
two cores carry (bench/concurrency.py measures those under load, where machine noise moves
rows by 15 %). Two kinds of turn alternate in blocks: the first turn of a conversation (no
`session_id`) and a turn of a conversation that already has CHAT_HISTORY_TURNS turns.
Process CPU includes the unit threads'.

`--model fake` puts bench/fake_model.py (a process of its own, so its CPU is not counted) behind
LLM_BASE_URL with no time to first token and `--token-ms` between tokens, so the turn includes
the `AsyncOpenAI` call over loopback HTTP. `--stream` adds the same two kinds streamed (SSE):
with the fake model, each of a reply's `--tokens` pieces arrives on its own, as a model's do, and
the difference from the JSON kinds is what a streamed turn's pieces cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time

from _setup import boot_django, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400, help="turns per kind")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--model", choices=("local", "fake"), default="local")
    parser.add_argument("--stream", action="store_true", help="also the streamed kinds")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--tokens", type=int, default=120, help="fake model: tokens a reply")
    parser.add_argument("--token-ms", type=float, default=2.0, help="fake model: between tokens")
    args = parser.parse_args()

    os.environ["LLM_LOCAL_TOKEN_DELAY_MS"] = "0"  # the responder answers at once
    with contextlib.ExitStack() as stack:
        if args.model == "fake":
            os.environ["LLM_BASE_URL"] = stack.enter_context(fake_model(args.tokens, args.token_ms))
        measure(args)


@contextlib.contextmanager
def fake_model(tokens: int, token_ms: float):
    from fake_model import command_line

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = command_line(port=port, ttft_ms=0, tokens=tokens, token_ms=token_ms)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()  # its banner: listening
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(10)


def measure(args: argparse.Namespace) -> None:
    boot_django()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from chatproject.asgi import application
    from chatproject.middleware import skip_request_started_thread_hop

    skip_request_started_thread_hop()  # as a served worker does (chatproject.workers)

    user, _ = get_user_model().objects.get_or_create(username="bench")
    token = Token.objects.get_or_create(user=user)[0].key
    model = "fake model over HTTP" if args.model == "fake" else "local responder"
    if args.loop == "uvloop":  # as the served workers run (uvicorn's `loop = "auto"`)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(asyncio.run(run(application, token, args.turns, args.block, args.stream, model)))


async def turn(application, token: str, body: dict) -> dict:
    from tests.asgi import post_scope  # (imports the app: after Django is set up)

    raw = json.dumps(body).encode()
    headers = {"host": "127.0.0.1", "authorization": f"Token {token}"}
    scope = post_scope("/api/chat/", raw, headers)
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client stays until the answer is sent

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"a turn failed: {sent}")
    body = b"".join(m.get("body", b"") for m in sent[1:])
    if not body.startswith(b"event:"):
        return json.loads(body)
    events = {}  # SSE: the start event has the session, done the answer
    for raw in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in raw.splitlines() if ": " in line)
        if lines.get("event") in ("start", "done", "error"):
            events[lines["event"]] = json.loads(lines["data"])
    if "error" in events or "done" not in events:
        raise SystemExit(f"a streamed turn failed: {body[-300:]!r}")
    return events["start"] | events["done"]


async def run(application, token: str, turns: int, block: int, stream: bool, model: str) -> str:
    from django.conf import settings

    # A conversation with a full history window, for the "later turn" kind.
    session_id = None
    for n in range(settings.CHAT_HISTORY_TURNS + 5):
        body = {"message": f"warm-up {n}"} | ({"session_id": session_id} if session_id else {})
        session_id = (await turn(application, token, body))["session_id"]
    from chatproject.workers import _freeze_loaded

    _freeze_loaded()  # as a served worker does once loaded: the GC's full walks skip start-up
    await asyncio.sleep(0.2)  # the door refuses turns while the loop is late (the freeze's walk)
    kinds = {
        "first turn of a conversation": (None, False),
        "later turn (full history)": (session_id, False),
    }
    if stream:
        kinds |= {"streamed first turn": (None, True), "streamed later turn": (session_id, True)}
    cpu = {kind: 0.0 for kind in kinds}
    system = {kind: 0.0 for kind in kinds}
    wall: dict[str, list[float]] = {kind: [] for kind in kinds}
    text = "How do I rotate my API key without downtime? " * 3
    done = 0
    while done < turns:
        for kind, (session, streamed) in kinds.items():
            for n in range(min(block, turns - done)):
                body = (
                    {"message": f"{text}{done + n}"}
                    | ({"session_id": session} if session else {})
                    | ({"stream": True} if streamed else {})
                )
                cpu0, system0, started = time.process_time(), os.times().system, time.perf_counter()
                await turn(application, token, body)
                wall[kind].append(time.perf_counter() - started)
                cpu[kind] += time.process_time() - cpu0
                system[kind] += os.times().system - system0
        done += min(block, turns - done)
    from chat.llm import get_chat_model

    if hasattr(model_ := get_chat_model(), "aclose"):
        await model_.aclose()  # the kept client's connections, before the loop ends
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    lines = [f"{turns} turns per kind, alternating blocks of {block}, {model}, {loop}, SQLite"]
    for kind in kinds:
        lines.append(
            f"  {kind:<30} CPU {1000 * cpu[kind] / turns:5.2f} ms/turn "
            f"(system {1000 * system[kind] / turns:5.2f}), "
            f"wall p50 {1000 * percentile(wall[kind], 50):5.2f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
