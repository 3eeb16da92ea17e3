"""The quality report in the admin, reached from the admin index (Chromium, live server)."""

import os

import pytest
from playwright.sync_api import expect

from tests.factories import FeedbackFactory, SessionFactory, TurnFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")


def test_staff_open_the_report_from_the_admin_index_and_see_labels_apart(page_for):
    staff = UserFactory(username="staff", is_staff=True, is_superuser=True)
    for version, votes, labels in (
        ("0.1.0", [True, False, False, None], [False, False, None, None]),
        ("0.2.0", [True, True, None, None, True, None], [True, None, None, None, None, False]),
    ):
        session = SessionFactory()
        for vote, label in zip(votes, labels, strict=True):
            turn = TurnFactory(session=session, app_version=version, environment="production")
            if vote is not None:
                FeedbackFactory(turn=turn, is_correct=vote, delivery_state="delivered")
            if label is not None:
                FeedbackFactory(
                    turn=turn,
                    user=staff,
                    is_correct=label,
                    expected_response="" if label else "Settings > Security > Reset password.",
                    delivery_state="delivered",
                )

    page = page_for(staff)
    page.goto(page.url.replace("/chat/", "/admin/"))
    page.get_by_role("link", name="Feedback quality report").click()
    expect(page.get_by_role("heading", name="Feedback quality report")).to_be_visible()

    headers = page.locator(".report thead tr").last.locator("th")
    assert all(text.strip() for text in headers.all_inner_texts())
    expect(page.get_by_role("columnheader", name="Staff labels")).to_be_visible()
    first = page.locator(".report tbody tr").first
    # 0.1.0: users 1 of 3 positive, staff 0 of 2 correct, counted apart.
    expect(first.locator("td").nth(2)).to_have_text("0")  # sampled out
    expect(first.locator("td").nth(4)).to_have_text("33% of 3")
    expect(first.locator("td").nth(8)).to_have_text("2")
    expect(first.locator("td").nth(9)).to_have_text("0% of 2")
    expect(first.locator("td").nth(11)).to_have_text("2")  # staff corrections
    page.set_viewport_size({"width": 1280, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # fits 1280 px
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 480})
        page.screenshot(path=f"{SCREENSHOTS}/report.png")
