"""The web page for people in a browser: a conversation with the person's feedback on each answer.

It composes both apps (chat for the conversation, feedback for the votes), so it lives at the
project level; its script uses the same JSON API as every other client.
"""

import math

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat import selectors
from chatproject.api import KeyedThrottle
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


# Set on sign-in, removed on sign-out: an anonymous visit that still carries it had a sign-in that
# expired, so the sign-in page can say so (and a first visit, or one after signing out, does not).
# It holds no identity, only that this browser was signed in.
SIGNED_IN_COOKIE = "was_signed_in"
SIGNED_IN_COOKIE_AGE = 365 * 24 * 3600


class SignInView(auth_views.LoginView):
    """Django's sign-in, with attempts limited per username and per address (THROTTLE_RATES)."""

    def get_context_data(self, **kwargs) -> dict:
        context = super().get_context_data(**kwargs)
        request = self.request
        context["session_expired"] = (
            request.method == "GET"
            and bool(context.get("next"))
            and not request.user.is_authenticated
            and request.COOKIES.get(SIGNED_IN_COOKIE) == "1"
        )
        return context

    def form_valid(self, form) -> HttpResponse:
        response = super().form_valid(form)
        response.set_cookie(
            SIGNED_IN_COOKIE,
            "1",
            max_age=SIGNED_IN_COOKIE_AGE,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Lax",
        )
        return response

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = request.POST.get("username", "").strip().lower()
        throttles = [KeyedThrottle("sign_in_ip"), KeyedThrottle("sign_in", username)]
        waits = [t.wait() or 1 for t in throttles if not t.allow_request(request, self)]
        if not waits:
            return super().post(request, *args, **kwargs)
        # An unbound form: validating this one would check the password, and its error (or its
        # absence) would tell an attacker whether the guess was right.
        wait = math.ceil(max(waits))
        message = f"Too many sign-in attempts. Try again in {wait} seconds."
        context = self.get_context_data(form=self.get_form_class()(request), throttled=message)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(wait)
        return response


class SignOutView(auth_views.LogoutView):
    """Django's sign-out, confirmed on the sign-in page it leads to."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.success(request, "You are signed out.")
        response.delete_cookie(SIGNED_IN_COOKIE, samesite="Lax")
        return response
