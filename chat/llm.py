"""The one seam to the LLM: a deterministic local responder, or any OpenAI-compatible API."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from chat.exceptions import LLMTimeout, LLMUnavailable

LOCAL_MODEL_NAME = "local-responder"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

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


class ChatModel(Protocol):
    model: str

    def complete(self, messages: Sequence[ChatMessage]) -> LLMReply: ...


def _count_tokens(text: str) -> int:
    # A word/punctuation count: close enough to BPE counts for usage figures of the local model.
    return len(re.findall(r"\w+|[^\w\s]", text))


class LocalResponder:
    """Answers without any network: the same conversation always gets the same reply."""

    model = LOCAL_MODEL_NAME

    def complete(self, messages: Sequence[ChatMessage]) -> LLMReply:
        content = self.reply_text(messages)
        prompt_tokens = sum(_count_tokens(m.content) + 4 for m in messages)
        return LLMReply(content, self.model, prompt_tokens, _count_tokens(content))

    @staticmethod
    def reply_text(messages: Sequence[ChatMessage]) -> str:
        user_turns = [m.content.strip() for m in messages if m.role == "user"]
        if not user_turns:
            return "Hello! What can I help you with?"
        question = user_turns[-1]
        words = re.findall(r"\w+", question.lower())
        keywords = sorted({w for w in words if len(w) > 3}, key=words.index)[:5]
        parts = [f"You asked: “{_clip(question, 200)}”."]
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

    def complete(self, messages: Sequence[ChatMessage]) -> LLMReply:
        """Raises: LLMTimeout, LLMUnavailable."""
        openai = self._openai
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=[m.as_dict() for m in messages]
            )
        except openai.APITimeoutError as exc:
            raise LLMTimeout("The language model did not answer in time.") from exc
        except openai.APIStatusError as exc:
            raise LLMUnavailable(
                f"The language model answered with HTTP {exc.status_code}."
            ) from exc
        except openai.APIError as exc:
            raise LLMUnavailable("The language model could not be reached.") from exc
        if not completion.choices or completion.choices[0].message.content is None:
            raise LLMUnavailable("The language model returned no answer.")
        content = completion.choices[0].message.content
        usage = completion.usage
        return LLMReply(
            content=content,
            model=completion.model or self.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else _count_tokens(content),
        )


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _model_for(base_url: str, model: str, api_key: str, timeout_s: float) -> ChatModel:
    if not base_url:
        return LocalResponder()
    return OpenAICompatibleChat(
        base_url=base_url, model=model or "gpt-4o-mini", api_key=api_key, timeout_s=timeout_s
    )


def get_chat_model() -> ChatModel:
    """The configured model (cached per configuration, so tests can switch with settings)."""
    return _model_for(
        settings.LLM_BASE_URL, settings.LLM_MODEL, settings.LLM_API_KEY, settings.LLM_TIMEOUT_S
    )
