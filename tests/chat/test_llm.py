import asyncio
import datetime
import json
import uuid

import pytest

from chat.apis import sse_event
from chat.exceptions import LLMUnavailable
from chat.llm import ChatMessage, LocalResponder, _lines, _sse_chunk


def test_the_local_responder_is_deterministic_and_remembers_the_previous_message():
    history = [
        ChatMessage("system", "be nice"),
        ChatMessage("user", "My invoice total looks wrong"),
        ChatMessage("assistant", "..."),
        ChatMessage("user", "Can you check it?"),
    ]
    first = asyncio.run(LocalResponder().complete(history))
    again = asyncio.run(LocalResponder().complete(history))
    assert first == again
    assert "Can you check it?" in first.content
    assert "My invoice total looks wrong" in first.content
    assert first.prompt_tokens > 0 and first.completion_tokens > 0


def test_the_local_responder_greets_a_new_conversation():
    reply = asyncio.run(LocalResponder().complete([ChatMessage("user", "Where is my parcel?")]))
    assert "start of our conversation" in reply.content


def test_the_local_responder_awaits_its_token_delay_so_other_turns_run_meanwhile():
    """Two streams at once interleave: the pace is an `asyncio.sleep`, not a blocking sleep."""
    order: list[str] = []

    async def read(name: str) -> None:
        stream = LocalResponder(token_delay_s=0.001).stream([ChatMessage("user", name)])
        async for _ in stream:
            order.append(name)

    async def both() -> None:
        await asyncio.gather(read("first question"), read("second question"))

    asyncio.run(both())
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert set(order) == {"first question", "second question"} and switches > 5


def _lines_of(*chunks: bytes) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    async def read():
        return [line async for line in _lines(source())]

    return asyncio.run(read())


def test_a_model_streams_lines_are_split_wherever_its_chunks_break():
    """The model's event stream arrives in arbitrary pieces: lines are whole, ends LF/CRLF/CR."""
    assert _lines_of(b'data: {"a"', b": 1}\n\nda", b"ta: [DONE]\n\n") == [
        b'data: {"a": 1}',
        b"",
        b"data: [DONE]",
        b"",
    ]
    # CRLF, a CRLF split across chunks, a lone CR, and a last line with no end at all.
    crlf = _lines_of(b"data: 1\r\n\r", b"\ndata: 2\rdata: 3")
    assert [line for line in crlf if line] == [b"data: 1", b"data: 2", b"data: 3"]


def test_a_streamed_chunk_that_is_not_json_or_reports_an_error_fails_the_turn_clearly():
    assert _sse_chunk(b'data: {"choices": []}') == {"choices": []}
    assert _sse_chunk(b": keepalive") is None
    assert _sse_chunk(b"data: [DONE]") is None
    for bad in (b"data: {not json", b"data: [1, 2]", b'data: {"error": {"message": "x"}}'):
        with pytest.raises(LLMUnavailable):
            _sse_chunk(bad)


def test_a_server_sent_event_keeps_what_json_dumps_default_str_wrote():
    data = {
        "text": "naïve “quotes”",
        "when": datetime.datetime(2026, 12, 7, 19, 30, tzinfo=datetime.UTC),
        "id": uuid.UUID(int=7),
        3: "int key",
    }
    event = sse_event("done", data)
    kind, payload = event.decode().removesuffix("\n\n").split("\n")
    assert kind == "event: done"
    assert json.loads(payload.removeprefix("data: ")) == json.loads(json.dumps(data, default=str))
