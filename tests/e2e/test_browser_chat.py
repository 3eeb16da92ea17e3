"""The chat page in a real browser (Debian's Chromium, driven by Playwright), live server."""

import os
import re
import time

import pytest
from playwright.sync_api import expect

from chat.models import Turn
from feedback import selectors, services
from tests.conftest import deliver_traces
from tests.factories import UserFactory
from tests.llm_server import FakeOpenAIServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")


def deliver_all(timeout=30.0):
    deliver_traces(timeout)  # what the trace worker does: feedback waits for its trace
    deadline = time.monotonic() + timeout
    while selectors.feedback_pending().exists():
        assert time.monotonic() < deadline
        services.feedback_deliver_due()
        time.sleep(0.2)


def test_sign_in_chat_stream_rate_reload_and_find_it_on_the_trace(page_for, assessments):
    alice = UserFactory(username="alice")
    page = page_for(alice)

    page.get_by_label("Your message").fill("How do I reset my password?")
    page.get_by_label("Your message").press("Enter")

    answer = page.locator(".msg.assistant .bubble").last
    expect(answer).to_contain_text("You asked: “How do I reset my password?”")
    expect(page.get_by_role("button", name="Bad answer")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/chat/[0-9a-f-]{36}/$"))
    expect(page.locator("#sessions a[aria-current=page]")).to_have_text(
        "How do I reset my password?"
    )

    page.get_by_role("button", name="Bad answer").click()
    expect(page.locator(".vote-status")).to_have_text("Bad answer saved. Thank you!")
    page.get_by_text("Comment or suggest a better answer").click()
    page.get_by_label("Comment").fill("It did not mention the reset link")
    page.get_by_label("A better answer").fill("Use Settings > Security > Reset password.")
    page.get_by_role("button", name="Save feedback").click()
    expect(page.locator(".save-status")).to_have_text("Feedback saved. Thank you!")

    page.reload()
    expect(page.get_by_role("button", name="Bad answer")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("button", name="Good answer")).to_have_attribute(
        "aria-pressed", "false"
    )
    expect(page.get_by_label("A better answer")).to_have_value(
        "Use Settings > Security > Reset password."
    )

    if SCREENSHOTS:
        page.get_by_label("Your message").fill("Can I also change my username?")
        page.get_by_label("Your message").press("Enter")
        expect(page.locator(".msg.assistant .feedback")).to_have_count(2)
        page.screenshot(path=f"{SCREENSHOTS}/chat-desktop.png")
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()  # opens at the latest message, as on a phone
        expect(page.get_by_label("Your message")).to_be_focused()
        page.screenshot(path=f"{SCREENSHOTS}/chat-phone.png")

    deliver_all()
    turn = Turn.objects.order_by("id").first()
    found = {a.name: a for a in assessments(turn.trace_id)}
    assert found["response_is_correct"].feedback.value is False
    assert found["response_is_correct"].rationale == "It did not mention the reset link"
    assert found["response_is_correct"].source.source_id == str(alice.id)
    assert (
        found["expected_response"].expectation.value == "Use Settings > Security > Reset password."
    )


def test_a_second_person_cannot_see_the_first_ones_conversations(page_for, live_server):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    page = page_for(alice)
    page.get_by_label("Your message").fill("alice's private question")
    page.get_by_label("Your message").press("Enter")
    expect(page.get_by_role("button", name="Good answer")).to_be_visible()
    alice_url = page.url

    other = page_for(bob)
    expect(other.locator("#sessions")).not_to_contain_text("alice's private question")
    response = other.goto(alice_url)
    assert response.status == 404


def test_a_failed_turn_shows_an_error_and_its_retry_makes_no_second_turn(page_for, settings):
    with FakeOpenAIServer() as llm:
        settings.LLM_BASE_URL, settings.LLM_MODEL, settings.LLM_TIMEOUT_S = llm.base_url, "m", 2.0
        llm.mode = "error"
        page = page_for(UserFactory())
        page.get_by_label("Your message").fill("Will this work?")
        page.get_by_role("button", name="Send").click()

        alert = page.locator(".retry-box")
        expect(alert).to_contain_text("The language model answered with HTTP 500.")
        llm.mode = "ok"
        page.get_by_role("button", name="Retry").click()

        expect(page.locator(".msg.assistant .bubble").last).to_have_text("echo[2]: Will this work?")
        expect(page.get_by_role("button", name="Good answer")).to_be_visible()  # stream done
        turn = Turn.objects.get()
        assert (turn.status, turn.attempts, turn.messages.count()) == ("completed", 2, 2)


def test_an_expired_session_says_so_and_points_to_sign_in(page_for):
    page = page_for(UserFactory())
    page.context.clear_cookies()
    page.get_by_label("Your message").fill("hello?")
    page.get_by_label("Your message").press("Enter")
    expect(page.locator("#banner")).to_contain_text("Your session has expired")
    expect(page.get_by_role("link", name="Sign in again")).to_be_visible()


def test_user_content_is_never_rendered_as_html(page_for):
    page = page_for(UserFactory())
    page.get_by_label("Your message").fill("<img src=x onerror=alert(1)><b>bold</b>")
    page.get_by_label("Your message").press("Enter")
    expect(page.get_by_role("button", name="Good answer")).to_be_visible()
    page.reload()
    assert page.locator(".msg img, .msg b").count() == 0
    expect(page.locator(".msg.user .bubble")).to_have_text(
        "<img src=x onerror=alert(1)><b>bold</b>"
    )
