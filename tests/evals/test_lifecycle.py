"""A disliked answer's lifecycle: queue → correction → dataset version → evaluation streaks."""

import pytest
from django.core.management import call_command

from chat.llm import ChatMessage, LocalResponder
from evals import selectors, services
from evals.models import DatasetRecord, EvaluationResult, EvaluationRun
from feedback.models import QueueItem
from tests.factories import answered_turn

pytestmark = pytest.mark.django_db


def record_run(record: DatasetRecord, passed: bool) -> EvaluationRun:
    """A completed run on the record's version with this one outcome (as `evaluate` stores it)."""
    run = EvaluationRun.objects.create(
        version=record.version,
        app_version="1.0",
        model="m",
        system_prompt="p",
        system_prompt_sha256="0" * 64,
        records=1,
        passed=int(passed),
        state=EvaluationRun.State.COMPLETED,
    )
    EvaluationResult.objects.create(run=run, record=record, passed=passed)
    return run


def test_a_turn_nobody_queued():
    turn, _ = answered_turn()
    life = selectors.turn_lifecycle(turn=turn)
    assert (life.stage, life.queue_state, life.label) == ("not queued", None, "not queued")


@pytest.mark.parametrize(
    ("state", "stage"),
    [
        (QueueItem.State.NEW, "new"),
        (QueueItem.State.IN_REVIEW, "in review"),
        (QueueItem.State.CORRECTED, "corrected"),
        (QueueItem.State.NOT_A_PROBLEM, "not a problem"),
    ],
)
def test_the_review_states(state, stage):
    turn, _ = answered_turn()
    QueueItem.objects.create(turn=turn, reason="rule: thumbs down", state=state)
    life = selectors.turn_lifecycle(turn=turn)
    assert (life.stage, life.queue_state, life.queue_reason) == (stage, state, "rule: thumbs down")
    assert life.label == stage


def test_a_staff_correction_counts_before_the_queue_item_is_closed(corrected):
    turn = corrected()
    QueueItem.objects.create(turn=turn, reason="r", state=QueueItem.State.IN_REVIEW)
    life = selectors.turn_lifecycle(turn=turn)
    assert (life.stage, life.queue_state, life.corrected) == ("corrected", "in_review", True)


def test_staged_then_in_its_first_dataset_version(corrected):
    turn = corrected()
    QueueItem.objects.create(turn=turn, reason="r", state=QueueItem.State.CORRECTED)
    services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    assert selectors.turn_lifecycle(turn=turn).staged_in == ("support",)
    call_command("datasets", "freeze", "support")
    services.dataset_stage(dataset_name="support", turn=corrected("other?"), reason="r")
    call_command("datasets", "freeze", "support")  # v2 holds the turn too

    life = selectors.turn_lifecycle(turn=turn)

    assert (life.stage, life.corrected, life.staged_in) == ("in dataset", True, ())
    assert life.first_version.number == 1
    assert life.label == "in dataset version support@v1"


def test_passing_since_the_first_run_of_the_newest_streak(corrected):
    turn = corrected()
    services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    call_command("datasets", "freeze", "support")
    services.dataset_stage(dataset_name="support", turn=corrected("other?"), reason="r")
    call_command("datasets", "freeze", "support")
    v1_record, v2_record = DatasetRecord.objects.filter(turn=turn).order_by("version__number")

    failed = record_run(v1_record, False)
    assert selectors.turn_lifecycle(turn=turn).label == (
        f"still failing (since evaluation run {failed.pk})"
    )
    record_run(v1_record, True)
    record_run(v1_record, False)
    fixed = record_run(v2_record, True)  # runs on either version count: the turn is the case
    latest = record_run(v2_record, True)

    life = selectors.turn_lifecycle(turn=turn)

    assert (life.stage, life.passing_since, life.latest_run) == ("passing", fixed, latest)
    assert life.label == f"passing since evaluation run {fixed.pk}"
    assert life.as_dict()["passing_since"] == {
        "id": fixed.pk,
        "version": "support@v2",
        "app_version": "1.0",
    }
    assert life.as_dict()["first_version"] == "support@v1"
    broke = record_run(v2_record, False)
    life = selectors.turn_lifecycle(turn=turn)
    assert (life.stage, life.failing_since, life.passing_since) == ("failing", broke, None)


def test_the_lifecycle_after_a_real_evaluation(corrected, mlflow_experiment):
    question = "Where is my parcel?"
    turn = corrected(question, LocalResponder.reply_text([ChatMessage("user", question)]))
    services.dataset_stage(dataset_name="offline", turn=turn, reason="r")
    call_command("datasets", "freeze", "offline")
    call_command("evaluate", "--dataset", "offline")
    run = EvaluationRun.objects.get()
    assert selectors.turn_lifecycle(turn=turn).passing_since == run


def test_many_turns_lifecycles_in_five_queries(corrected, django_assert_num_queries):
    turns = [corrected(f"q{i}?") for i in range(5)]
    for turn in turns[:3]:
        services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    call_command("datasets", "freeze", "support")
    record_run(DatasetRecord.objects.get(turn=turns[0]), True)
    QueueItem.objects.create(turn=turns[4], reason="r", state=QueueItem.State.NOT_A_PROBLEM)

    with django_assert_num_queries(5):
        lives = selectors.turn_lifecycles(turn_ids=[t.pk for t in turns])

    assert [lives[t.pk].stage for t in turns] == [
        "passing",
        "in dataset",
        "in dataset",
        "corrected",
        "not a problem",
    ]
