import asyncio

from chat.llm import ChatMessage, LocalResponder


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
