from chat.llm import ChatMessage, LocalResponder


def test_the_local_responder_is_deterministic_and_remembers_the_previous_message():
    history = [
        ChatMessage("system", "be nice"),
        ChatMessage("user", "My invoice total looks wrong"),
        ChatMessage("assistant", "..."),
        ChatMessage("user", "Can you check it?"),
    ]
    first = LocalResponder().complete(history)
    again = LocalResponder().complete(history)
    assert first == again
    assert "Can you check it?" in first.content
    assert "earlier you said: “My invoice total looks wrong”" in first.content
    assert first.completion_tokens > 0
    assert first.prompt_tokens > len(history)


def test_the_local_responder_greets_a_new_conversation():
    reply = LocalResponder().complete([ChatMessage("user", "Where is my parcel?")])
    assert "start of our conversation" in reply.content
    assert "parcel" in reply.content
