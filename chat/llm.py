"""The one seam to the LLM: a deterministic local responder, or any OpenAI-compatible API.

Both are awaited: a turn waiting on the model holds no thread and no database connection, only
its coroutine (see docs/serving.md). `trace_headers` (the W3C `traceparent` of the turn's LLM span,
from `Span.trace_headers`) go on the HTTP request, so a traced model server joins the turn's trace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import orjson
from asgiref.sync import AsyncToSync
from django.conf import settings

from chat.exceptions import LLMTimeout, LLMUnavailable

LOCAL_MODEL_NAME = "local-responder"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    message_id: int | None = None  # the stored `Message`, when it is one (traces name it)

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMReply:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ReplyStream:
    """Text pieces as the model produces them; `reply` holds the whole answer once exhausted.

    Each wait for the next piece is bounded by `idle_timeout_s` (LLMTimeout past it): a model
    server that stops answering mid-stream frees the turn instead of holding it.
    """

    def __init__(
        self,
        pieces: AsyncIterator[str],
        finish: Callable[[str], LLMReply],
        *,
        idle_timeout_s: float | None = None,
    ):
        self._pieces = pieces
        self._finish = finish
        self._idle_timeout_s = idle_timeout_s
        self._seen: list[str] = []
        self._tasks: tuple[asyncio.Task, ...] = ()
        self.reply: LLMReply | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout_s):
                        piece = await anext(self._pieces)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise LLMTimeout("The language model stopped answering.") from exc
                self._seen.append(piece)
                yield piece
        finally:
            await self.aclose()
        self.reply = self._finish("".join(self._seen))

    def with_keepalive(self, every_s: float | None) -> AsyncIterator[str | None]:
        """The pieces, with None whenever `every_s` passes without one (a stream's keepalive).

        The model's stream is read by a task of its own, so a keepalive never cancels the model
        call; leaving the loop cancels that task and the call. The idle timeout and the
        keepalive are checked by one watcher a few times per period, not by a timer per piece:
        at ~35 pieces a second per turn, per-piece timers were a tenth of a streamed turn's CPU.

        The reading starts here, not at the first piece asked for: a streamed turn starts its
        model call before its start event goes out (`chat.services.turn_stream`). Whoever calls
        this and does not read the pieces to their end calls `stop_reading()`.
        """
        if not every_s:
            return aiter(self)
        loop = asyncio.get_running_loop()
        queue = _Handoff(loop)
        finished = object()
        last_piece = last_sent = loop.time()

        async def read() -> None:
            nonlocal last_piece
            try:
                try:
                    async for piece in self._pieces:
                        last_piece = loop.time()
                        self._seen.append(piece)
                        queue.put(piece)
                finally:
                    await self.aclose()
            except Exception as exc:  # handed to the reader below, which raises it
                queue.put(exc)
                return
            self.reply = self._finish("".join(self._seen))
            queue.put(finished)

        async def watch() -> None:
            nonlocal last_sent
            idle_timeout = self._idle_timeout_s
            step = min(every_s, idle_timeout or every_s) / 4
            while True:
                await asyncio.sleep(step)
                now = loop.time()
                if idle_timeout and now - last_piece >= idle_timeout:
                    reader.cancel()
                    queue.put(LLMTimeout("The language model stopped answering."))
                    return
                if now - max(last_piece, last_sent) >= every_s:
                    last_sent = now
                    queue.put(None)

        reader = asyncio.create_task(read())
        self._tasks = (asyncio.create_task(watch()), reader)
        return self._drain(queue, finished)

    async def _drain(self, queue: _Handoff, finished: object) -> AsyncIterator[str | None]:
        try:
            while True:
                item = await queue.get()
                if item is finished:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.stop_reading()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def stop_reading(self) -> None:
        """Cancel the tasks `with_keepalive` started (the model call with them), if running."""
        for task in self._tasks:
            task.cancel()

    async def aclose(self) -> None:
        """Stop the model's generation (its HTTP response is closed)."""
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()

    @property
    def text_so_far(self) -> str:
        return "".join(self._seen)


class _Handoff:
    """Items from one task to one other, in order: `asyncio.Queue` without what one reader and
    one writer never need (its size limit, its waiters' lists, its loop checks per call), which
    cost a few percent of a streamed turn's CPU (bench/turn_cpu.py --stream)."""

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._items: collections.deque = collections.deque()
        self._loop = loop
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


TraceHeaders = Mapping[str, str]


class ChatModel(Protocol):
    model: str

    def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> Awaitable[LLMReply]: ...

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream: ...

    async def aclose(self) -> None:
        """Close what this model keeps for the running event loop (before the loop ends)."""


def _count_tokens(text: str) -> int:
    # A word/punctuation count: close enough to BPE counts for usage figures of the local model.
    return len(re.findall(r"\w+|[^\w\s]", text))


class LocalResponder:
    """Answers without any network: the same conversation always gets the same reply."""

    model = LOCAL_MODEL_NAME

    def __init__(self, token_delay_s: float = 0.0):
        # Simulated generation speed, so streaming looks and measures like a real model.
        self.token_delay_s = token_delay_s

    async def aclose(self) -> None:
        pass  # keeps nothing

    async def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> LLMReply:
        stream = self.stream(messages)
        async for _ in stream:
            pass
        return stream.reply

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream:
        content = self.reply_text(messages)
        prompt_tokens = sum(_count_tokens(m.content) + 4 for m in messages)

        async def pieces() -> AsyncIterator[str]:
            for piece in re.findall(r"\S+\s*", content):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield piece

        return ReplyStream(
            pieces(), lambda text: LLMReply(text, self.model, prompt_tokens, _count_tokens(text))
        )

    @staticmethod
    def reply_text(messages: Sequence[ChatMessage]) -> str:
        user_turns = [m.content.strip() for m in messages if m.role == "user"]
        if not user_turns:
            return "Hello! What can I help you with?"
        question = user_turns[-1]
        words = re.findall(r"\w+", question.lower())
        keywords = sorted({w for w in words if len(w) > 3}, key=words.index)[:5]
        parts = [f"You asked: “{_clip(question, 2000)}”."]
        if keywords:
            parts.append("The key points I see are: " + ", ".join(keywords) + ".")
        if len(user_turns) > 1:
            parts.append(
                f"This is message {len(user_turns)} of our conversation; "
                f"earlier you said: “{_clip(user_turns[-2], 120)}”."
            )
        else:
            parts.append("This is the start of our conversation.")
        parts.append(
            "I am the local responder (no model server configured), so I can only reflect "
            "your question back; set LLM_BASE_URL to use a real model."
        )
        return " ".join(parts)


class OpenAICompatibleChat:
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, ...), awaited.

    A whole answer must come within `timeout_s`; a streamed one must start within it and never
    pause longer. One `AsyncOpenAI` client per event loop: its connection pool belongs to a loop.
    """

    def __init__(self, *, base_url: str, model: str, api_key: str, timeout_s: float):
        import httpx2
        import openai

        self.model = model
        self._openai = openai
        self._httpx = httpx2  # the SDK's HTTP client (its errors, from a raw stream's reads)
        self._base_url = base_url
        self._api_key = api_key or "not-needed"
        self.timeout_s = timeout_s
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _new_client(self):
        # Retries are ours to decide: a chat turn should fail fast with a clear 502/504.
        # The client's own cap (1,000 connections) is above the app's turn cap per process.
        # Its HTTP transport is aiohttp's (the SDK's `aiohttp` extra): the default one scans
        # its whole connection pool on every request (O(turns in flight)) and parses
        # responses in Python (py-spy at 512 JSON users: 13% of the event loop's samples in
        # that scan alone).
        return self._openai.AsyncOpenAI(
            base_url=self._base_url,
            api_key=self._api_key,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=self._openai.DefaultAioHttpClient(timeout=self.timeout_s),
        )

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator:
        """The `AsyncOpenAI` client for one call.

        Under the ASGI server: one per event loop, kept, with its connection pool. Under a sync
        caller (runserver's WSGI, Django's test client) each request runs on an event loop of its
        own that ends with it, so the call gets a client of its own, closed when the call ends:
        a kept one would leave its connections open behind a closed loop.
        """
        if getattr(AsyncToSync.executors, "current", None) is None:
            loop = asyncio.get_running_loop()
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._new_client()
            yield client
            return
        client = self._new_client()
        try:
            yield client
        finally:
            await client.close()

    async def aclose(self) -> None:
        """Close the client kept for the running event loop (its connections), if any."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def _body(self, messages: Sequence[ChatMessage], **extra) -> dict:
        return {"model": self.model, "messages": [m.as_dict() for m in messages], **extra}

    async def _post(self, client, body: dict, trace_headers: TraceHeaders | None, *, stream: bool):
        """POST /chat/completions through the SDK's client, returning its raw HTTP response.

        `client.post` is the SDK's documented way to an endpoint as it is (its "undocumented
        endpoints"): the same client, connection pool, timeout and errors as
        `chat.completions.create`, without what `create` adds per call: it walks the whole
        request through its TypedDict annotations (`async_transform`), hashing typing aliases
        at every level of every message, and builds a pydantic model of the answer. py-spy at
        512 JSON users put 39 % of the event loop's busy time in that walk alone. Our body is
        already what the API takes: plain JSON of strings.
        """
        return await client.post(
            "/chat/completions",
            cast_to=self._httpx.Response,
            body=body,
            options={"headers": dict(trace_headers or {})},
            stream=stream,
            stream_cls=None,
        )

    async def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> LLMReply:
        """Raises: LLMTimeout, LLMUnavailable."""
        with self._errors():
            async with self._session() as client, asyncio.timeout(self.timeout_s):
                body = self._body(messages)
                response = await self._post(client, body, trace_headers, stream=False)
        try:
            completion = orjson.loads(response.content)
            content = completion["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError) as exc:
            raise LLMUnavailable("The language model returned no answer.") from exc
        if not isinstance(content, str):
            raise LLMUnavailable("The language model returned no answer.")
        usage = completion.get("usage") or {}
        return LLMReply(
            content=content,
            model=completion.get("model") or self.model,
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or _count_tokens(content),
        )

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream:
        """Raises (while iterating): LLMTimeout, LLMUnavailable."""
        usage: dict = {}
        model_name = [self.model]
        body = self._body(messages, stream=True, stream_options={"include_usage": True})

        async def pieces() -> AsyncIterator[str]:
            # The raw event stream, split into lines here and each `data:` line read with orjson:
            # the SDK's typed chunks (a pydantic model built per token) cost ~2/3 of a streamed
            # turn's CPU (py-spy, bench/concurrency.py at 128 users), and httpx's text and line
            # decoders, two more generators per piece, a tenth (bench/turn_cpu.py --stream).
            # Errors and the HTTP client stay the SDK's.
            with self._errors():
                async with self._session() as client:
                    response = await self._post(client, body, trace_headers, stream=True)
                    try:
                        async for line in _lines(response.aiter_bytes()):
                            chunk = _sse_chunk(line)
                            if chunk is None:
                                continue
                            model_name[0] = chunk.get("model") or model_name[0]
                            if chunk.get("usage"):
                                usage.update(chunk["usage"])
                            for choice in chunk.get("choices") or ():
                                content = (choice.get("delta") or {}).get("content")
                                if content:
                                    yield content
                    finally:
                        # The end, an error, a cancelled turn: closing the response tells the
                        # model server to stop generating.
                        await response.aclose()

        def finish(text: str) -> LLMReply:
            return LLMReply(
                content=text,
                model=model_name[0],
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", _count_tokens(text)),
            )

        return ReplyStream(pieces(), finish, idle_timeout_s=self.timeout_s)

    @contextmanager
    def _errors(self):
        openai, httpx = self._openai, self._httpx
        try:
            yield
        except (TimeoutError, openai.APITimeoutError, httpx.TimeoutException) as exc:
            # httpx's own errors reach us from a raw stream's reads, which the SDK does not wrap.
            raise LLMTimeout("The language model did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable("The language model's stream broke off.") from exc
        except openai.APIStatusError as exc:
            raise LLMUnavailable(
                f"The language model answered with HTTP {exc.status_code}."
            ) from exc
        except openai.APIError as exc:
            raise LLMUnavailable("The language model could not be reached.") from exc


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The lines of a byte stream, without their ends (LF, CRLF or CR, as server-sent events)."""
    rest = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            # A CRLF split across two chunks leaves one more empty line: lines are read one by
            # one and an empty one is skipped, so it changes nothing.
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield line
    if rest:
        yield rest


def _sse_chunk(line: bytes) -> dict | None:
    """One `data:` line of a chat-completions event stream as a dict; None for anything else.

    Raises LLMUnavailable for an `error` event or a chunk that is not JSON.
    """
    if not line.startswith(b"data:"):
        return None  # blank separators, comments (keepalives), `event:` lines
    data = line[5:].strip()
    if data == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LLMUnavailable("The language model sent a malformed stream.") from exc
    if not isinstance(chunk, dict):
        raise LLMUnavailable("The language model sent a malformed stream.")
    if chunk.get("error"):
        raise LLMUnavailable("The language model reported an error mid-stream.")
    return chunk


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_models: dict[tuple, ChatModel] = {}


def get_chat_model() -> ChatModel:
    """The configured model (one per configuration, so tests can switch with settings)."""
    key = (
        settings.LLM_BASE_URL,
        settings.LLM_MODEL,
        settings.LLM_API_KEY,
        settings.LLM_TIMEOUT_S,
        settings.LLM_LOCAL_TOKEN_DELAY_MS / 1000,
    )
    model = _models.get(key)
    if model is None:
        base_url, name, api_key, timeout_s, local_delay_s = key
        if not base_url:
            model = LocalResponder(token_delay_s=local_delay_s)
        else:
            model = OpenAICompatibleChat(
                base_url=base_url, model=name or "gpt-4o-mini", api_key=api_key, timeout_s=timeout_s
            )
        _models[key] = model
    return model
