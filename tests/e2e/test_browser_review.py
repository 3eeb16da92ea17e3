"""The staff review queue in a real browser: a whole pass with the keyboard only."""

import os
import time

import pytest
from playwright.sync_api import expect

from feedback.models import Feedback
from tests.factories import FeedbackFactory, UserFactory, answered_turn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")
TURNS = 20


def test_a_reviewer_labels_twenty_disliked_turns_with_the_keyboard_alone(page_for, live_server):
    for n in range(TURNS):
        turn, _ = answered_turn(
            question=f"Question number {n}: where is order #{1000 + n}?",
            answer=f"Answer number {n}.",
        )
        FeedbackFactory(turn=turn, is_correct=False, comment=f"comment {n}")
    staff = UserFactory(username="reviewer", is_staff=True, is_superuser=True)
    page = page_for(staff)

    page.goto(f"{live_server.url}/admin/chat/turn/")
    page.get_by_role("link", name="Review queue").click()
    expect(page.locator("#review-progress")).to_contain_text(f"0 of {TURNS}")
    expect(page.get_by_text(f"Question number {TURNS - 1}")).to_be_visible()  # newest first
    expect(page.get_by_text(f"comment {TURNS - 1}")).to_be_visible()
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/review-queue.png", full_page=True)

    started = time.monotonic()
    for n in reversed(range(TURNS)):
        expect(page.locator("#review-turn-heading")).to_be_visible()
        expect(page.get_by_text(f"Answer number {n}.")).to_be_visible()
        if n == 0:
            # The last one gets a correction: type it, Ctrl+Enter labels it incorrect with it.
            page.keyboard.press("Tab")
            box = page.get_by_label("Expected response (optional)")
            box.focus()
            box.fill("Order #1000 shipped on Monday.")
            box.press("Control+Enter")
        else:
            page.keyboard.press("c" if n % 2 else "x")
        page.wait_for_load_state("domcontentloaded")
    elapsed = time.monotonic() - started

    expect(page.locator("#review-empty")).to_contain_text("Nothing left to review")
    expect(page.locator("#review-progress")).to_contain_text(f"{TURNS} of {TURNS}")
    labels = Feedback.objects.filter(user=staff)
    assert labels.count() == TURNS
    assert labels.filter(is_correct=True).count() == TURNS // 2
    assert (
        labels.get(expected_response__gt="").expected_response == "Order #1000 shipped on Monday."
    )
    print(f"\nreview queue: {TURNS} turns labelled with the keyboard in {elapsed:.1f} s")


def test_a_second_reviewer_is_shown_a_different_turn(page_for, live_server, browser):
    for n in range(2):
        turn, _ = answered_turn(question=f"Shared question {n}", answer=f"Shared answer {n}")
        FeedbackFactory(turn=turn, is_correct=False)
    first = page_for(UserFactory(username="first", is_staff=True, is_superuser=True))
    second = page_for(UserFactory(username="second", is_staff=True, is_superuser=True))

    first.goto(f"{live_server.url}/admin/chat/turn/review/")
    second.goto(f"{live_server.url}/admin/chat/turn/review/")

    expect(first.get_by_text("Shared answer 1")).to_be_visible()
    expect(second.get_by_text("Shared answer 0")).to_be_visible()


def test_the_same_twenty_labels_through_the_turns_list_take_five_steps_each(page_for, live_server):
    """The way before the queue, timed for comparison: read each turn, then run an action."""
    for n in range(TURNS):
        turn, _ = answered_turn(question=f"Listed question {n}", answer=f"Listed answer {n}.")
        FeedbackFactory(turn=turn, is_correct=False)
    staff = UserFactory(username="lister", is_staff=True, is_superuser=True)
    page = page_for(staff)
    page.goto(f"{live_server.url}/admin/chat/turn/?status__exact=completed")

    steps = 0
    started = time.monotonic()
    for n in reversed(range(TURNS)):
        question = page.get_by_text(f"Listed question {n}", exact=True)
        row = page.locator("#result_list tbody tr").filter(has=question)
        row.locator("th a").click()  # the change page: the whole answer
        expect(page.get_by_text(f"Listed answer {n}.").first).to_be_visible()
        page.go_back()
        row.locator("input.action-select").check()
        page.locator("select[name=action]").select_option(
            "mark_correct" if n % 2 else "mark_incorrect"
        )
        page.locator("button[name=index]").click()
        expect(page.locator(".messagelist")).to_contain_text("1 turn(s)")
        steps += 5
    elapsed = time.monotonic() - started

    assert Feedback.objects.filter(user=staff).count() == TURNS
    print(f"\nturns list: {TURNS} turns labelled in {elapsed:.1f} s, {steps} steps")
