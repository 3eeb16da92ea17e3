"""CPU of one chat turn in the app's own code: the ASGI application in-process, one run.

    .venv/bin/python bench/turn_cpu.py [--turns 400] [--block 50]

Each turn goes through what a served turn goes through past uvicorn: the door, Django's ASGI
handler and middleware, the async DRF view, its ORM units on the unit threads (SQLite), the local
responder with no token delay, the trace and its row. No HTTP, no model time, one turn at a
time: what is left is the CPU the app spends per turn, the figure that decides how many turns/s
two cores carry (bench/concurrency.py measures those under load, where machine noise moves
rows by 15 %). Two kinds of turn alternate in blocks: the first turn of a conversation (no
`session_id`) and a turn of a conversation that already has CHAT_HISTORY_TURNS turns.
Process CPU includes the unit threads'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from _setup import boot_django, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400, help="turns per kind")
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()

    os.environ["LLM_LOCAL_TOKEN_DELAY_MS"] = "0"  # the responder answers at once
    boot_django()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from chatproject.asgi import application
    from chatproject.middleware import skip_request_started_thread_hop

    skip_request_started_thread_hop()  # as a served worker does (chatproject.workers)

    user, _ = get_user_model().objects.get_or_create(username="bench")
    token = Token.objects.get_or_create(user=user)[0].key
    print(asyncio.run(run(application, token, args.turns, args.block)))


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
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


async def run(application, token: str, turns: int, block: int) -> str:
    from django.conf import settings

    # A conversation with a full history window, for the "later turn" kind.
    session_id = None
    for n in range(settings.CHAT_HISTORY_TURNS + 5):
        body = {"message": f"warm-up {n}"} | ({"session_id": session_id} if session_id else {})
        session_id = (await turn(application, token, body))["session_id"]
    kinds = {"first turn of a conversation": None, "later turn (full history)": session_id}
    cpu = {kind: 0.0 for kind in kinds}
    wall: dict[str, list[float]] = {kind: [] for kind in kinds}
    text = "How do I rotate my API key without downtime? " * 3
    done = 0
    while done < turns:
        for kind, session in kinds.items():
            for n in range(min(block, turns - done)):
                body = {"message": f"{text}{done + n}"} | (
                    {"session_id": session} if session else {}
                )
                cpu0, started = time.process_time(), time.perf_counter()
                await turn(application, token, body)
                wall[kind].append(time.perf_counter() - started)
                cpu[kind] += time.process_time() - cpu0
        done += min(block, turns - done)
    lines = [f"{turns} turns per kind, alternating blocks of {block}, local responder, SQLite"]
    for kind in kinds:
        lines.append(
            f"  {kind:<30} CPU {1000 * cpu[kind] / turns:5.2f} ms/turn, "
            f"wall p50 {1000 * percentile(wall[kind], 50):5.2f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
