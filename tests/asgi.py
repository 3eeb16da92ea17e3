"""Requests through Django's real ASGI handler, as uvicorn sends them, with a client that can leave.

`asgi_post` runs in the test's thread (async_to_sync), so the view's ORM units see the test's
transaction. Leaving is what a server tells the app when the client's connection closes: an
`http.disconnect` message, upon which Django cancels the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from chatproject.asgi import application

_running = [0]  # requests in flight through this module


@dataclass
class AsgiResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_sent_ns: list[int] = field(default_factory=list)  # when each body message was sent

    def json(self):
        return json.loads(self.body)

    def events(self) -> list[tuple[str, dict | None]]:
        """The server-sent events (comments such as keepalives as ("comment", None))."""
        found = []
        for raw in self.body.decode().split("\n\n"):
            if not raw:
                continue
            if raw.startswith(":"):
                found.append(("comment", None))
                continue
            kind, data = raw.split("\n", 1)
            found.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return found


def post_scope(
    path: str, raw: bytes, headers: dict[str, str], *, server=("127.0.0.1", 8000)
) -> dict:
    """The ASGI scope uvicorn hands the app for a JSON POST of `raw` to `path`."""
    all_headers = {"content-type": "application/json", "content-length": str(len(raw)), **headers}
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": server,
    }


async def _post(
    path: str,
    body: dict,
    headers: dict[str, str],
    leave_after_events: int | None,
    leave_after_s: float | None,
) -> AsgiResponse:
    raw = json.dumps(body).encode()
    scope = post_scope(path, raw, {"host": "testserver", **headers}, server=("testserver", 80))
    left = asyncio.Event()
    sent_body = [False]
    response = AsgiResponse()

    async def receive():
        if not sent_body[0]:
            sent_body[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            response.body_sent_ns.append(time.time_ns())
            response.body += message.get("body", b"")
            events = response.body.count(b"\n\nevent: ") + response.body.startswith(b"event: ")
            if leave_after_events is not None and events >= leave_after_events:
                left.set()

    async def leave_later():
        await asyncio.sleep(leave_after_s)
        left.set()

    timer = asyncio.create_task(leave_later()) if leave_after_s is not None else None
    # As Django's test client: the test's connection (and its transaction) outlives the request
    # (counted: several requests may run at once in one loop).
    if not _running[0]:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
    _running[0] += 1
    try:
        await application(scope, receive, send)
    finally:
        _running[0] -= 1
        if not _running[0]:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        if timer is not None:
            timer.cancel()
    return response


async def asgi_post_async(
    path: str,
    body: dict,
    *,
    token: str,
    headers: dict[str, str] | None = None,
    leave_after_events: int | None = None,
    leave_after_s: float | None = None,
) -> AsgiResponse:
    """`asgi_post` as a coroutine, for several requests at once in one event loop."""
    return await _post(
        path,
        body,
        {"authorization": f"Token {token}", **(headers or {})},
        leave_after_events,
        leave_after_s,
    )


def asgi_post(
    path: str,
    body: dict,
    *,
    token: str,
    headers: dict[str, str] | None = None,
    leave_after_events: int | None = None,
    leave_after_s: float | None = None,
) -> AsgiResponse:
    """POST JSON through the ASGI handler; the client leaves after that many events or seconds."""
    return async_to_sync(asgi_post_async)(
        path,
        body,
        token=token,
        headers=headers,
        leave_after_events=leave_after_events,
        leave_after_s=leave_after_s,
    )
