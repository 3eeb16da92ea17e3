"""Rules in the admin, in a browser: create one, apply it to past turns, review what it queued."""

import os

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from feedback.models import QueueItem
from quality.models import Rule
from tests.factories import FeedbackFactory, UserFactory, answered_turn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")


def test_staff_create_a_rule_apply_it_to_past_turns_and_review_its_queue(page_for):
    staff = UserFactory(username="staff", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label__in=["quality", "feedback"],
            codename__in=["manage_rules", "view_rule", "add_feedback", "change_feedback"],
        )
    )
    disliked, _ = answered_turn(question="Where is my parcel?", answer="No idea.")
    FeedbackFactory(turn=disliked, is_correct=False, comment="Useless")
    liked, _ = answered_turn(question="Opening hours?", answer="9 to 5.")
    FeedbackFactory(turn=liked, is_correct=True)

    page = page_for(staff)
    page.goto(page.url.replace("/chat/", "/admin/quality/rule/add/"))
    page.get_by_label("Name:", exact=True).fill("Disliked answers")
    page.get_by_label("Owner's thumbs down").check()
    page.get_by_label("Owner's rating at most").fill("2")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    page.locator("input[name=_selected_action]").first.check()
    page.locator("select[name=action]").select_option("apply_to_past_turns")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("1 past turn(s) acted on")
    expect(page.locator("#result_list")).to_contain_text("thumbs down or rating ≤ 2")
    if SCREENSHOTS:
        page.set_viewport_size({"width": 1280, "height": 420})
        page.screenshot(path=f"{SCREENSHOTS}/rules.png")
        page.set_viewport_size({"width": 1280, "height": 800})

    page.goto(page.url.split("/admin/")[0] + "/admin/chat/turn/review/?signal=queued&unlabelled=on")
    expect(page.locator("#review-queued")).to_contain_text("Disliked answers")
    expect(page.locator("#review-answer")).to_have_text("No idea.")
    page.get_by_label("Expected response (optional)").fill("It left the depot today.")
    page.get_by_role("button", name="Incorrect").click()
    expect(page.locator("#review-empty")).to_be_visible()

    assert Rule.objects.get().created_by == staff
    item = QueueItem.objects.get()
    assert (item.turn_id, item.state, item.decided_by) == (disliked.pk, "corrected", staff)
