"""The web page for people in a browser: a conversation with the person's feedback on each answer.

It composes both apps (chat for the conversation, feedback for the votes), so it lives at the
project level; its script uses the same JSON API as every other client.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat import selectors
from feedback.selectors import feedback_by_turn


@login_required
def chat_page(request: HttpRequest, session_id=None) -> HttpResponse:
    session = None
    messages = []
    if session_id is not None:
        session = selectors.session_get(user=request.user, session_id=session_id)
        feedback = feedback_by_turn(user=request.user, session=session)
        for message in selectors.session_messages(session=session):
            message.my_feedback = feedback.get(message.turn_id)
            messages.append(message)
    context = {
        "sessions": selectors.session_list(user=request.user)[:100],
        "session": session,
        "messages": messages,
    }
    return render(request, "chat/chat.html", context)
