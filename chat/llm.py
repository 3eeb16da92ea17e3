"""The one seam to the LLM: a deterministic local responder, or any OpenAI-compatible API.

`trace_headers` (the W3C `traceparent` of the turn's LLM span, from `Span.trace_headers`) go on
the HTTP request, so a traced model server joins the turn's trace.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

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
    """Text pieces as the model produces them; `reply` holds the whole answer once exhausted."""

    def __init__(self, pieces: Iterator[str], finish: Callable[[str], LLMReply]):
        self._pieces = pieces
        self._finish = finish
        self._seen: list[str] = []
        self.reply: LLMReply | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self._seen.append(piece)
            yield piece
        self.reply = self._finish("".join(self._seen))

    @property
    def text_so_far(self) -> str:
        return "".join(self._seen)


TraceHeaders = Mapping[str, str]


class ChatModel(Protocol):
    model: str

    def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> LLMReply: ...

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream: ...


def _count_tokens(text: str) -> int:
    # A word/punctuation count: close enough to BPE counts for usage figures of the local model.
    return len(re.findall(r"\w+|[^\w\s]", text))


class LocalResponder:
    """Answers without any network: the same conversation always gets the same reply."""

    model = LOCAL_MODEL_NAME

    def __init__(self, token_delay_s: float = 0.0):
        # Simulated generation speed, so streaming looks and measures like a real model.
        self.token_delay_s = token_delay_s

    def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> LLMReply:
        stream = self.stream(messages)
        for _ in stream:
            pass
        return stream.reply

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream:
        content = self.reply_text(messages)
        prompt_tokens = sum(_count_tokens(m.content) + 4 for m in messages)

        def pieces() -> Iterator[str]:
            for piece in re.findall(r"\S+\s*", content):
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
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
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, ...)."""

    def __init__(self, *, base_url: str, model: str, api_key: str, timeout_s: float):
        import openai

        self.model = model
        self._openai = openai
        # Retries are ours to decide: a chat turn should fail fast with a clear 502/504.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0
        )

    def complete(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> LLMReply:
        """Raises: LLMTimeout, LLMUnavailable."""
        with self._errors():
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=[m.as_dict() for m in messages],
                extra_headers=dict(trace_headers or {}),
            )
        self._check_choices(completion)
        content = completion.choices[0].message.content
        usage = completion.usage
        return LLMReply(
            content=content,
            model=completion.model or self.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else _count_tokens(content),
        )

    def stream(
        self, messages: Sequence[ChatMessage], *, trace_headers: TraceHeaders | None = None
    ) -> ReplyStream:
        """Raises (while iterating too): LLMTimeout, LLMUnavailable."""
        usage: dict = {}
        model_name = [self.model]

        def pieces() -> Iterator[str]:
            with self._errors():
                chunks = self._client.chat.completions.create(
                    model=self.model,
                    messages=[m.as_dict() for m in messages],
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=dict(trace_headers or {}),
                )
                for chunk in chunks:
                    model_name[0] = chunk.model or model_name[0]
                    if chunk.usage:
                        usage.update(chunk.usage.model_dump())
                    for choice in chunk.choices or []:
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content

        def finish(text: str) -> LLMReply:
            return LLMReply(
                content=text,
                model=model_name[0],
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", _count_tokens(text)),
            )

        return ReplyStream(pieces(), finish)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        openai = self._openai
        try:
            yield
        except openai.APITimeoutError as exc:
            raise LLMTimeout("The language model did not answer in time.") from exc
        except openai.APIStatusError as exc:
            raise LLMUnavailable(
                f"The language model answered with HTTP {exc.status_code}."
            ) from exc
        except openai.APIError as exc:
            raise LLMUnavailable("The language model could not be reached.") from exc

    @staticmethod
    def _check_choices(completion) -> None:
        if not completion.choices or completion.choices[0].message.content is None:
            raise LLMUnavailable("The language model returned no answer.")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _model_for(
    base_url: str, model: str, api_key: str, timeout_s: float, local_delay_s: float
) -> ChatModel:
    if not base_url:
        return LocalResponder(token_delay_s=local_delay_s)
    return OpenAICompatibleChat(
        base_url=base_url, model=model or "gpt-4o-mini", api_key=api_key, timeout_s=timeout_s
    )


def get_chat_model() -> ChatModel:
    """The configured model (cached per configuration, so tests can switch with settings)."""
    return _model_for(
        settings.LLM_BASE_URL,
        settings.LLM_MODEL,
        settings.LLM_API_KEY,
        settings.LLM_TIMEOUT_S,
        settings.LLM_LOCAL_TOKEN_DELAY_MS / 1000,
    )
