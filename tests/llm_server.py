"""A small OpenAI-compatible chat-completions server on loopback, for tests and benchmarks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    """Answers POST /v1/chat/completions; `mode` is "ok", "error" (HTTP 500), "slow" or
    "broken_stream" (a stream that sends two pieces, then an error event) or "stalled_stream"
    (two pieces, then silence for `slow_seconds`)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.slow_seconds = 3.0
        self.on_request = None  # called (no arguments) as each chat request arrives
        # {word: reply}: a conversation whose system prompt contains `word` (any case) gets
        # `reply` instead of the echo (a prompt change that changes the answers).
        self.replies_by_system_word: dict[str, str] = {}
        # {word: reply}, checked first: a question containing `word` (any case) gets `reply`
        # whatever the system prompt (a case every prompt answers right).
        self.replies_by_question_word: dict[str, str] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(
                    {"path": self.path, "body": body, "headers": dict(self.headers.items())}
                )
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if server.on_request is not None:
                    server.on_request()
                if server.mode == "error":
                    return self._send(500, {"error": {"message": "upstream exploded"}})
                if server.mode == "slow":
                    time.sleep(server.slow_seconds)
                last = body["messages"][-1]["content"]
                system = " ".join(
                    m["content"] for m in body["messages"] if m.get("role") == "system"
                ).lower()
                content = next(
                    (
                        r
                        for w, r in server.replies_by_question_word.items()
                        if w.lower() in last.lower()
                    ),
                    None,
                ) or next(
                    (r for w, r in server.replies_by_system_word.items() if w.lower() in system),
                    f"echo[{len(body['messages'])}]: {last}",
                )
                if body.get("stream"):
                    return self._stream(body, content)
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "test-model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    },
                )

            def _stream(self, body: dict, content: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0}
                base["model"] = body.get("model", "test-model")
                words = content.split(" ")
                for i, word in enumerate(words):
                    piece = word if i == len(words) - 1 else word + " "
                    delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    self._event({**base, "choices": [delta]})
                    if server.mode == "broken_stream" and i == 1:
                        self._event({"error": {"message": "the model crashed"}})
                        return
                    if server.mode == "stalled_stream" and i == 1:
                        time.sleep(server.slow_seconds)
                        return
                self._event(
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": len(words),
                    "total_tokens": 11 + len(words),
                }
                self._event({**base, "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, payload: dict) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def chat_headers(self) -> list[dict]:
        """The HTTP headers of each chat-completions request, names in lower case."""
        return [
            {k.lower(): v for k, v in r["headers"].items()}
            for r in self.requests
            if r["path"].rstrip("/") == "/v1/chat/completions"
        ]

    def chat_requests(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["path"].rstrip("/") == "/v1/chat/completions"]

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
