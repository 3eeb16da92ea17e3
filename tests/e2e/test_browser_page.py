"""The chat page's layout, wording and keyboard paths, on a phone and on a desktop (Chromium)."""

import pytest
from playwright.sync_api import expect

from chat.models import ChatSession
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

PHONE = {"width": 390, "height": 844}
LONG_TITLE = (
    "My printer says it is offline although it is plugged in, the light is green and the "
    "laptop sees it on the network - what now?"
)


def ask(page, text):
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")
    expect(page.locator(".msg.assistant .feedback")).to_have_count(
        page.locator(".msg.assistant").count()
    )


def horizontal_overflow(page) -> int:
    return page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def assert_in_viewport(page, locator):
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], box
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], box


def test_on_a_phone_a_long_title_never_scrolls_sideways_and_send_stays_in_view(page_for):
    alice = UserFactory(username="alice")
    page = page_for(alice, viewport=PHONE)
    ask(page, LONG_TITLE)
    expect(page.locator("#title")).to_have_text(LONG_TITLE[:60])
    assert horizontal_overflow(page) <= 0
    assert_in_viewport(page, page.get_by_role("button", name="Send"))

    ChatSession.objects.filter(owner=alice).update(title=LONG_TITLE * 2)
    for _ in range(3):
        ask(page, "And one more question, to fill the page " * 3)
    page.reload()
    assert horizontal_overflow(page) <= 0
    send = page.get_by_role("button", name="Send")
    assert_in_viewport(page, send)
    # Pinned: the composer sits at the bottom of the viewport, not below the messages.
    composer = page.locator("#composer").bounding_box()
    assert abs(composer["y"] + composer["height"] - PHONE["height"]) <= 1
    expect(page.get_by_role("button", name="Rename")).to_be_visible()
    assert_in_viewport(page, page.get_by_role("button", name="Delete"))

    page.get_by_text("Your conversations").click()  # folded away on a phone
    expect(page.locator("#sessions a[aria-current=page]")).to_be_visible()
    assert horizontal_overflow(page) <= 0

    # No spaces to break at: a pasted link as the title and in a message.
    url = "https://example.com/" + "a-very-long-path-segment/" * 12
    ChatSession.objects.filter(owner=alice).update(title=url)
    ask(page, url)
    page.reload()
    assert horizontal_overflow(page) <= 0
    assert_in_viewport(page, page.get_by_role("button", name="Send"))


@pytest.mark.parametrize("viewport", [None, PHONE], ids=["desktop", "phone"])
def test_a_conversation_opens_at_its_latest_message(page_for, viewport):
    page = page_for(UserFactory(), viewport=viewport)
    for n in range(6):
        ask(page, f"Question number {n}, long enough to take some room on the screen. " * 4)
    page.reload()
    latest = page.locator(".msg.assistant").last
    expect(latest.get_by_role("button", name="Good answer")).to_be_in_viewport()
    expect(page.locator(".msg.user").first).not_to_be_in_viewport()
    # The page itself does not scroll: the conversation scrolls inside it.
    assert page.evaluate("window.scrollY") == 0


def test_a_new_conversation_gets_rename_and_delete_without_a_reload(page_for):
    page = page_for(UserFactory())
    expect(page.get_by_role("button", name="Rename")).to_be_hidden()
    ask(page, "A fresh conversation")

    page.once("dialog", lambda dialog: dialog.accept("Renamed at once"))
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("#title")).to_have_text("Renamed at once")
    expect(page.locator("#sessions a[aria-current=page]")).to_have_text("Renamed at once")
    assert ChatSession.objects.get().title == "Renamed at once"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/chat/")
    expect(page.locator("#sessions")).to_contain_text("No conversations yet.")


def test_feedback_messages_are_worded_after_the_buttons_and_shown_beside_them(page_for):
    page = page_for(UserFactory())
    ask(page, "Is this right?")
    feedback = page.locator(".msg.assistant .feedback").last

    feedback.get_by_text("Comment or suggest a better answer").click()
    feedback.get_by_label("Comment").fill("No vote yet")
    feedback.get_by_role("button", name="Save feedback").click()
    note = feedback.locator(".save-status")
    expect(note).to_have_text("Choose Good answer or Bad answer first.")
    expect(note).to_have_class("fb-status save-status problem")
    expect(note).to_be_in_viewport()

    feedback.get_by_role("button", name="Good answer").click()
    expect(feedback.locator(".vote-status")).to_have_text("Good answer saved. Thank you!")
    expect(feedback.locator(".vote-status")).to_have_class("fb-status vote-status ok")
    expect(note).to_have_text("")

    feedback.get_by_role("button", name="Save feedback").click()
    expect(note).to_have_text("Feedback saved. Thank you!")
    expect(note).to_be_in_viewport()


def test_focus_starts_in_the_composer_and_the_latest_vote_is_two_tabs_away(page_for):
    page = page_for(UserFactory())
    expect(page.get_by_label("Your message")).to_be_focused()
    ask(page, "First question")
    ask(page, "Second question")
    page.reload()
    composer = page.get_by_label("Your message")
    expect(composer).to_be_focused()

    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    page.keyboard.press("Tab")
    skip = page.get_by_role("button", name="Rate the latest answer")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    latest = page.locator(".msg.assistant").last
    expect(latest.get_by_role("button", name="Good answer")).to_be_focused()
    page.keyboard.press("Enter")
    expect(latest.locator(".vote-status")).to_have_text("Good answer saved. Thank you!")


def test_someone_elses_conversation_and_an_unknown_page_are_a_styled_404(page_for, live_server):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    page = page_for(alice)
    ask(page, "alice's private question")
    alice_url = page.url

    other = page_for(bob)
    for url in (alice_url, f"{live_server.url}/no/such/page/"):
        response = other.goto(url)
        assert response.status == 404
        expect(other.get_by_role("heading", name="Page not found")).to_be_visible()
        expect(other.locator("body")).not_to_contain_text("alice's private question")
        assert other.evaluate("getComputedStyle(document.body).margin") == "0px"  # our CSS
    other.get_by_role("link", name="Back to your conversations").click()
    other.wait_for_url("**/chat/")


def test_sign_in_and_sign_out_say_what_happened_and_nothing_more(browser, live_server):
    UserFactory(username="carol")
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/chat/")  # a first visit: never signed in
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.locator(".notice")).to_have_count(0)

        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("wrong password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".error")).to_have_text(
            "That username and password do not match. Please try again."
        )
        expect(page.locator(".notice, .error")).to_have_count(1)

        page.get_by_label("Password").fill("pw-for-tests-123")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/chat/")
        page.get_by_role("button", name="Sign out").click()
        expect(page.locator(".notice")).to_have_text("You are signed out.")
        page.goto(f"{live_server.url}/chat/")
        expect(page.locator(".notice")).to_have_count(0)

        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("pw-for-tests-123")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/chat/")
        session_cookie = [c for c in context.cookies() if c["name"] != "sessionid"]
        context.clear_cookies()
        context.add_cookies(session_cookie)  # the sign-in lapsed; the browser remembers one
        page.goto(f"{live_server.url}/chat/")
        expect(page.locator(".notice")).to_contain_text("Your session has ended.")
    finally:
        context.close()
