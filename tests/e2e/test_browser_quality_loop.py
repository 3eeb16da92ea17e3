"""One thumbs-down from the vote to a passing evaluation (issue 20's end-to-end test).

The API (a person votes), the rules thread's pass (what the feedback worker runs every 0.5 s),
the admin in a browser (a rule made, the review queue, a version frozen and tagged, the
lifecycle), and `manage.py evaluate` against a fake OpenAI-compatible model whose answer to the
parcel question depends on the system prompt (the only thing mocked: the model's HTTP API).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.core.management import CommandError, call_command
from playwright.sync_api import expect
from rest_framework.authtoken.models import Token

from evals import services as evals_services
from evals.models import Dataset, DatasetVersion, EvaluationRun
from feedback.models import QueueItem
from quality import services as quality_services
from tests.factories import FeedbackFactory, UserFactory, answered_turn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")
RIGHT = "It left the depot this morning and arrives tomorrow."


def evaluate(*args: str) -> None:
    """`manage.py evaluate` in a thread of its own: it runs an event loop, as the command does
    in a shell, and Playwright's is running in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(call_command, "evaluate", *args).result()


def test_one_thumbs_down_through_a_rule_the_queue_a_dataset_and_an_evaluation(
    page_for, llm_server, settings, live_server, capsys
):
    settings.LLM_SYSTEM_PROMPT = "You are a support assistant."
    lead = UserFactory(username="lead", is_staff=True, is_superuser=True)
    alice = UserFactory(username="alice")
    # support@v1: an earlier corrected case, which every prompt answers right.
    earlier, _ = answered_turn(question="What are your opening hours?", answer="No idea.")
    FeedbackFactory(turn=earlier, user=lead, is_correct=False, expected_response="9 to 5.")
    evals_services.dataset_stage(dataset_name="support", turn=earlier, reason="seed")
    evals_services.dataset_version_create(
        dataset=Dataset.objects.get(name="support"), created_by=lead
    )
    llm_server.replies_by_question_word = {"opening hours": "9 to 5."}
    llm_server.replies_by_system_word = {"parcel-policy": RIGHT}

    # The feedback worker is running: its rules thread's first pass starts from now.
    quality_services.quality_worker_pass()

    # 1. The lead makes a rule in the admin: disliked answers to the queue and to `support`.
    page = page_for(lead)
    admin = live_server.url + "/admin/"
    page.goto(admin + "quality/rule/add/")
    page.get_by_label("Name:", exact=True).fill("Disliked answers")
    page.get_by_label("Owner's thumbs down").check()
    page.get_by_label("Dataset name:").fill("support")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    # 2. Alice asks through the API and votes the answer down (over HTTP: Playwright's event
    # loop runs in this thread).
    api = requests.Session()
    api.headers["Authorization"] = f"Token {Token.objects.create(user=alice).key}"
    asked = api.post(live_server.url + "/api/chat/", json={"message": "Where is my parcel?"})
    assert asked.status_code == 200, asked.content
    assert asked.json()["response"] != RIGHT
    vote = api.put(
        f"{live_server.url}/api/messages/{asked.json()['message_id']}/feedback/",
        json={"is_correct": False, "comment": "That is not an answer"},
    )
    assert vote.status_code == 201, vote.content

    # The rules thread's next pass (every 0.5 s in the worker) queues the turn and stages it.
    quality_services.quality_worker_pass()
    item = QueueItem.objects.get()
    assert (item.reason, item.state) == ("Disliked answers", QueueItem.State.NEW)

    # 3. Review: the reason is shown, the answer corrected.
    page.goto(admin + "chat/turn/review/?signal=queued&unlabelled=on")
    expect(page.locator("#review-queued")).to_contain_text("Disliked answers")
    expect(page.locator("#review-lifecycle")).to_contain_text("in review")
    page.get_by_label("Expected response (optional)").fill(RIGHT)
    page.get_by_role("button", name="Incorrect").click()
    expect(page.locator("#review-empty")).to_be_visible()
    item.refresh_from_db()
    assert item.state == QueueItem.State.CORRECTED

    # 4. Version 2 (v1 + the corrected staged turn), its diff, and `prod` moved to it.
    page.goto(admin + "evals/dataset/")
    page.locator("input[name=_selected_action]").first.check()
    page.locator("select[name=action]").select_option("freeze_next_version")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("@v2: 2 records (1 added")
    support = Dataset.objects.get(name="support")
    page.goto(admin + f"evals/dataset/{support.pk}/diff/?old=1&new=2")
    expect(page.locator("body")).to_contain_text("Where is my parcel?")
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/dataset-diff.png", full_page=True)
    page.goto(admin + "evals/datasettag/add/")
    page.get_by_label("Dataset:").select_option(label="support")
    page.get_by_label("Name:").fill("prod")
    page.get_by_label("Version:").select_option(label="support@v2")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    v2 = DatasetVersion.objects.get(dataset=support, number=2)
    assert support.tags.get(name="prod").version == v2

    # 5. The evaluation fails with today's prompt (a gate: non-zero exit) ...
    with pytest.raises(CommandError) as failed:
        evaluate("--dataset", "support@prod", "--min-pass-rate", "1")
    assert failed.value.returncode == 1
    first = EvaluationRun.objects.get()
    assert (first.version, first.records, first.passed) == (v2, 2, 1)
    # ... and passes with the changed one: "1 newly passing".
    settings.LLM_SYSTEM_PROMPT = "You are a support assistant. Follow the parcel-policy."
    evaluate("--dataset", "support@prod", "--min-pass-rate", "1")
    assert "1 newly passing" in capsys.readouterr().out
    second = EvaluationRun.objects.latest("started_at")
    assert (second.passed, second.regression) == (2, False)

    # 6. The lifecycle, where staff look: the turn's admin page and the report.
    turn_id = item.turn_id
    page.goto(admin + f"chat/turn/{turn_id}/change/")
    expect(page.locator("body")).to_contain_text(f"passing since evaluation run {second.pk}")
    page.goto(live_server.url + "/admin/reports/feedback/")
    expect(page.locator("#lifecycle-table")).to_contain_text("passing")

    # The agreement report, for the README: three reviewers on twelve turns, two gold items.
    if SCREENSHOTS:
        from feedback import services as feedback_services
        from feedback.models import GoldItem

        sam, kim = (
            UserFactory(username="sam", is_staff=True),
            UserFactory(username="kim", is_staff=True),
        )
        verdicts = {
            lead: "CCWCCWCCWCCW",
            sam: "CCWCCWCWWCCC",
            kim: "CWCCWWCCWWCC",
        }
        turns = [answered_turn(question=f"Question {i}?", answer="Maybe.")[0] for i in range(12)]
        for turn, known in ((turns[0], True), (turns[2], False)):
            GoldItem.objects.create(turn=turn, is_correct=known, created_by=lead)
        for reviewer, labels in verdicts.items():
            for turn, label in zip(turns, labels, strict=True):
                feedback_services.feedback_submit(user=reviewer, turn=turn, is_correct=label == "C")
        page.goto(admin + "chat/turn/agreement/")
        page.screenshot(path=f"{SCREENSHOTS}/agreement.png", full_page=True)
