from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from chat.models import Turn
from feedback import services as feedback_services
from feedback.models import Feedback, QueueItem
from quality import selectors, services
from quality.models import MatchCursor, Rule, RuleMatch
from tests.factories import FeedbackFactory, TurnFactory, UserFactory

pytestmark = pytest.mark.django_db


def _picked(rule: Rule) -> set[int]:
    return set(selectors.rule_turns(rule=rule).values_list("id", flat=True))


def test_each_filter_field_selects_the_right_turns(make_rule):
    down = FeedbackFactory(is_correct=False).turn
    up = FeedbackFactory(is_correct=True).turn
    rated_2 = FeedbackFactory(is_correct=None, rating=2).turn
    rated_4 = FeedbackFactory(is_correct=None, rating=4).turn
    commented = FeedbackFactory(is_correct=True, comment="meh").turn
    owner_corrected = FeedbackFactory(is_correct=True, expected_response="Better").turn
    staff_corrected = TurnFactory()
    FeedbackFactory(turn=staff_corrected, user=UserFactory(is_staff=True), expected_response="B")
    withdrawn = FeedbackFactory(is_correct=False, withdrawn=True).turn
    staff_down = TurnFactory()
    FeedbackFactory(turn=staff_down, user=UserFactory(is_staff=True), is_correct=False)
    other_model = TurnFactory(model="gpt-x", app_version="2.0", environment="production")
    failed = TurnFactory(status=Turn.Status.FAILED, error="boom")
    plain = TurnFactory()

    assert _picked(make_rule(thumbs_down=True)) == {down.pk}
    assert _picked(make_rule(max_rating=2)) == {rated_2.pk}
    assert _picked(make_rule(thumbs_down=True, max_rating=2)) == {down.pk, rated_2.pk}
    assert _picked(make_rule(has_comment=True)) == {commented.pk}
    assert _picked(make_rule(has_correction=True)) == {owner_corrected.pk, staff_corrected.pk}
    assert _picked(make_rule(model="gpt-x")) == {other_model.pk}
    assert _picked(make_rule(app_version="2.0")) == {other_model.pk}
    assert _picked(make_rule(environment="production")) == {other_model.pk}
    assert _picked(make_rule(failed_turns=True)) == {failed.pk}
    assert _picked(make_rule(thumbs_down=True, environment="production")) == set()
    everything = _picked(make_rule())
    assert failed.pk not in everything and {plain.pk, up.pk, rated_4.pk} <= everything
    assert withdrawn.pk not in _picked(Rule(thumbs_down=True))
    assert staff_down.pk not in _picked(Rule(thumbs_down=True))


def test_a_rule_on_failed_turns_with_vote_conditions_is_refused():
    with pytest.raises(ValidationError):
        Rule(name="x", failed_turns=True, thumbs_down=True).clean()
    with pytest.raises(ValidationError, match="action"):
        Rule(name="x", enqueue=False).clean()


def test_sampling_is_deterministic_and_close_to_the_rate():
    picks = [selectors.rule_samples(rule_id=7, turn_id=t, rate=0.2) for t in range(5000)]
    again = [selectors.rule_samples(rule_id=7, turn_id=t, rate=0.2) for t in range(5000)]
    other_rule = [selectors.rule_samples(rule_id=8, turn_id=t, rate=0.2) for t in range(5000)]

    assert picks == again
    assert 0.18 < sum(picks) / 5000 < 0.22
    assert picks != other_rule  # each rule draws its own sample
    assert all(selectors.rule_samples(rule_id=1, turn_id=t, rate=1.0) for t in range(50))
    assert not any(selectors.rule_samples(rule_id=1, turn_id=t, rate=0.0) for t in range(50))


def test_a_turn_matched_twice_or_by_two_rules_is_queued_once(make_rule):
    turn = FeedbackFactory(is_correct=False).turn
    first = make_rule(name="thumbs down", thumbs_down=True)
    second = make_rule(name="any vote", thumbs_down=True, max_rating=5)

    assert services.rule_act(rule=first, turn=turn) is not None
    assert services.rule_act(rule=first, turn=turn) is None
    by_second = services.rule_act(rule=second, turn=turn)

    assert QueueItem.objects.get(turn=turn).reason == "thumbs down"
    assert by_second.queued is False  # already in the queue
    assert RuleMatch.objects.filter(turn=turn).count() == 2


def test_a_new_thumbs_down_is_queued_by_the_worker_chore(make_rule, user):
    rule = make_rule(name="Disliked answers", thumbs_down=True, max_rating=2)
    before = FeedbackFactory(is_correct=False).turn
    Feedback.objects.filter(turn=before).update(updated_at=timezone.now() - timedelta(minutes=1))
    services.quality_worker_pass()  # the worker's first pass starts its cursor here

    turn = TurnFactory(session__owner=user)
    feedback_services.feedback_submit(user=user, turn=turn, is_correct=False, comment="wrong")
    liked = TurnFactory(session__owner=user)
    feedback_services.feedback_submit(user=user, turn=liked, is_correct=True)
    services.quality_worker_pass()

    item = QueueItem.objects.get(turn=turn)
    assert item.reason == "Disliked answers" and item.state == QueueItem.State.NEW
    assert not QueueItem.objects.filter(turn__in=[liked, before]).exists()
    assert RuleMatch.objects.get(rule=rule).turn == turn

    # A changed vote (thumbs up -> down) is new feedback too.
    feedback_services.feedback_submit(user=user, turn=liked, is_correct=False)
    services.quality_worker_pass()
    assert QueueItem.objects.filter(turn=liked, reason="Disliked answers").exists()


def test_each_pass_reads_only_what_changed_since_the_cursor(make_rule, user):
    make_rule(thumbs_down=True)
    services.rules_match_new()
    old = FeedbackFactory(is_correct=False)
    # Changed long before the cursor: outside the re-read window.
    Feedback.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    MatchCursor.objects.update(position=timezone.now())

    counts = services.rules_match_new()

    assert counts["matched"] == 0 and not QueueItem.objects.exists()


def test_failed_turns_are_matched_as_they_finish_and_running_ones_wait(make_rule):
    make_rule(name="Failures", failed_turns=True)
    services.rules_match_new()
    running = TurnFactory(status=Turn.Status.PENDING)
    failed_after = TurnFactory(status=Turn.Status.FAILED, error="boom")

    services.rules_match_new()
    assert set(QueueItem.objects.values_list("turn_id", flat=True)) == {failed_after.pk}
    assert MatchCursor.objects.get().turn_id < running.pk

    Turn.objects.filter(pk=running.pk).update(status=Turn.Status.FAILED)
    services.rules_match_new()
    assert set(QueueItem.objects.values_list("turn_id", flat=True)) == {
        failed_after.pk,
        running.pk,
    }
    assert MatchCursor.objects.get().turn_id == failed_after.pk


def test_applying_a_rule_to_past_turns_acts_on_each_once_and_keeps_the_sample(make_rule):
    past = [FeedbackFactory(is_correct=False).turn for _ in range(30)]
    rule = make_rule(name="Half of the disliked", thumbs_down=True, sample_rate=0.5)
    expected = {
        t.pk for t in past if selectors.rule_samples(rule_id=rule.pk, turn_id=t.pk, rate=0.5)
    }

    counts, finished = services.rule_apply(rule=rule, batch=7)
    again, _ = services.rule_apply(rule=rule, batch=7)

    assert finished
    assert set(RuleMatch.objects.filter(rule=rule).values_list("turn_id", flat=True)) == expected
    assert counts["matched"] == len(expected) and counts["sampled_out"] == 30 - len(expected)
    assert again["matched"] == 0
    assert set(QueueItem.objects.values_list("turn_id", flat=True)) == expected
    assert all(m.backfill for m in RuleMatch.objects.all())


def test_rules_apply_command_shows_progress_and_honours_since(make_rule):
    old = FeedbackFactory(is_correct=False).turn
    Turn.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    recent = [FeedbackFactory(is_correct=False).turn for _ in range(3)]
    make_rule(name="Disliked", thumbs_down=True)
    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    from io import StringIO

    out = StringIO()
    call_command(
        "rules", "apply", "--rule", "Disliked", "--since", since, "--batch", "2", stdout=out
    )

    text = out.getvalue()
    assert "3 past turn(s) to look at" in text
    assert "[2/3]" in text and "[3/3]" in text
    assert "acted on 3 turn(s)" in text
    assert set(QueueItem.objects.values_list("turn_id", flat=True)) == {t.pk for t in recent}


def test_the_dataset_action_calls_the_configured_function(make_rule, settings):
    calls.clear()
    settings.QUALITY_DATASET_STAGE = "tests.quality.test_rules.record_stage"
    rule = make_rule(name="To dataset", has_correction=True, enqueue=False, dataset_name="support")
    turn = FeedbackFactory(is_correct=False, expected_response="Right").turn

    match = services.rule_act(rule=rule, turn=turn)

    assert calls == [("support", turn.pk, "To dataset")]
    assert match.staged is True and match.queued is None
    assert not QueueItem.objects.exists()


def test_the_dataset_action_is_skipped_when_not_configured_or_not_importable(
    make_rule, settings, caplog
):
    rule = make_rule(name="To dataset", thumbs_down=True, dataset_name="support")
    settings.QUALITY_DATASET_STAGE = ""
    first = services.rule_act(rule=rule, turn=FeedbackFactory(is_correct=False).turn)
    settings.QUALITY_DATASET_STAGE = "evals.nowhere.dataset_stage"
    second = services.rule_act(rule=rule, turn=FeedbackFactory(is_correct=False).turn)

    assert first.staged is None and second.staged is None
    assert first.queued and second.queued  # the other actions still ran
    assert "QUALITY_DATASET_STAGE is empty" in caplog.text
    assert "cannot be imported" in caplog.text


calls: list = []


def record_stage(*, dataset_name, turn, reason) -> bool:
    calls.append((dataset_name, turn.pk, reason))
    return True


@pytest.mark.django_db(transaction=True)
def test_the_worker_keeps_a_rules_thread_that_queues_a_new_thumbs_down_within_seconds(
    make_rule, user, settings
):
    import time

    settings.QUALITY_MATCH_INTERVAL_S = 0.1
    make_rule(name="Disliked answers", thumbs_down=True)
    try:
        assert services.quality_worker_ensure()  # started
        assert services.quality_worker_ensure() == []  # already running
        time.sleep(0.5)  # its first pass sets the cursor
        turn = TurnFactory(session__owner=user)
        feedback_services.feedback_submit(user=user, turn=turn, is_correct=False)
        stored = time.monotonic()
        while not QueueItem.objects.filter(turn=turn).exists():
            assert time.monotonic() - stored < 5, "not queued within 5 s"
            time.sleep(0.05)
    finally:
        services.quality_worker_stop()
    assert QueueItem.objects.get(turn=turn).reason == "Disliked answers"


def test_rules_list_and_match_commands(make_rule, user):
    from io import StringIO

    make_rule(name="Disliked", thumbs_down=True)
    make_rule(name="Off", has_comment=True, enabled=False)
    call_command("rules", "match", stdout=StringIO())  # the first pass starts the cursor
    turn = TurnFactory(session__owner=user)
    feedback_services.feedback_submit(user=user, turn=turn, is_correct=False)

    matched, listed = StringIO(), StringIO()
    call_command("rules", "match", stdout=matched)
    call_command("rules", "list", stdout=listed)

    assert "matched 1" in matched.getvalue()
    assert listed.getvalue().splitlines() == [
        "Disliked: enabled, 1 match(es)",
        "Off: disabled, 0 match(es)",
    ]
