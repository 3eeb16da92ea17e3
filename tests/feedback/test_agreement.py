"""Reviewer agreement: kappa against worked examples, and the report from real staff labels."""

import pytest

from feedback import services
from feedback.agreement import agreement_report, cohen_kappa, settled_label
from feedback.models import GoldItem
from tests.factories import TurnFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_kappa_of_a_worked_example():
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15 (Wikipedia's example):
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    result = cohen_kappa(pairs)
    assert (result.pairs, result.agreed) == (50, 35)
    assert result.percent == pytest.approx(70.0)
    assert result.kappa == pytest.approx(0.4)


def test_kappa_is_undefined_when_both_always_give_one_label_and_negative_below_chance():
    assert cohen_kappa([(True, True)] * 4).kappa is None
    assert cohen_kappa([]).pairs == 0
    assert cohen_kappa([(True, False), (False, True)]).kappa == pytest.approx(-1.0)


def test_a_disagreement_is_settled_by_a_strict_majority_of_three():
    assert settled_label({1: True, 2: False}) is None
    assert settled_label({1: True, 2: False, 3: False}) is False
    assert settled_label({1: True, 2: True}) is True


def _label(reviewer, turn, is_correct):
    services.feedback_submit(user=reviewer, turn=turn, is_correct=is_correct)


def test_the_report_from_staff_labels_and_gold_items():
    ann, bob, cat = (UserFactory(is_staff=True, username=n) for n in ("ann", "bob", "cat"))
    turns = [TurnFactory() for _ in range(6)]
    # ann and bob agree on 0-2 (True, True, False), disagree on 3 and 4; cat settles 3.
    for turn, a, b in zip(
        turns[:5], [True, True, False, True, False], [True, True, False, False, True], strict=True
    ):
        _label(ann, turn, a)
        _label(bob, turn, b)
    _label(cat, turns[3], False)
    # The owner's own vote is not a staff label.
    services.feedback_submit(user=turns[0].user, turn=turns[0], is_correct=False)
    # Gold: turn 5 is wrong; ann says wrong (right), bob says correct (wrong).
    GoldItem.objects.create(turn=turns[5], is_correct=False)
    _label(ann, turns[5], False)
    _label(bob, turns[5], True)

    report = agreement_report()

    by_name = {row.reviewer.username: row for row in report.reviewers}
    assert set(by_name) == {"ann", "bob", "cat"}
    assert by_name["ann"].labels == 6
    # ann with others: bob on turns 0-5 (3 agreed of 6 incl. gold turn), cat on turn 3 (no).
    assert (by_name["ann"].with_others.pairs, by_name["ann"].with_others.agreed) == (7, 3)
    assert (by_name["ann"].with_gold.pairs, by_name["ann"].with_gold.agreed) == (1, 1)
    assert (by_name["bob"].with_gold.pairs, by_name["bob"].with_gold.agreed) == (1, 0)
    assert report.double_labelled == 6
    assert report.settled == 1  # turn 3: two of three say wrong
    assert report.waiting_for_third == sorted([turns[4].pk, turns[5].pk])
    correct = next(row for row in report.labels if row.label == "correct")
    # Pairs: 0 (T,T) 1 (T,T) 2 (F,F) 3 (T,F)(T,F)(F,F) 4 (F,T) 5 (F,T): correct both 2, one 4.
    assert correct.specific_percent == pytest.approx(100 * 4 / 8)


def test_the_agreement_page_shows_the_report_to_labellers_only(client):
    staff = UserFactory(is_staff=True, is_superuser=True)
    viewer = UserFactory(is_staff=True)
    _label(staff, TurnFactory(), True)

    client.force_login(viewer)
    assert client.get("/admin/chat/turn/agreement/").status_code == 403
    client.force_login(staff)
    page = client.get("/admin/chat/turn/agreement/")
    assert page.status_code == 200
    assert "Reviewer agreement" in page.content.decode()
    assert staff.username in page.content.decode()


# --- The queue's side: double review, gold items, a third reviewer ------------------------------


def _queue_for(reviewer, **filters):
    from django.utils import timezone

    from feedback.selectors import ReviewFilter, review_queue

    return list(
        review_queue(
            filters=ReviewFilter(signal="", **filters), reviewer=reviewer, now=timezone.now()
        )
    )


def _next_for(reviewer):
    from feedback.selectors import ReviewFilter

    turn = services.review_claim_next(reviewer=reviewer, filters=ReviewFilter(signal=""))
    if turn is not None:
        services.review_release(reviewer=reviewer, turn=turn)
    return turn


def test_a_double_reviewed_turn_waits_for_a_second_reviewer_and_never_comes_back_to_the_first(
    settings,
):
    ann, bob = UserFactory(is_staff=True), UserFactory(is_staff=True)
    turns = [TurnFactory() for _ in range(100)]
    settings.REVIEW_DOUBLE_SHARE = 0.1
    double = [t for t in turns if t.pk % 100 < 10]
    single = [t for t in turns if t.pk % 100 >= 10]
    assert len(double) == 10

    for turn in turns:
        _label(ann, turn, True)

    assert _queue_for(ann) == []
    assert sorted(t.pk for t in _queue_for(bob)) == sorted(t.pk for t in double)
    _label(bob, double[0], True)
    assert double[0] not in _queue_for(bob) and single[0] not in _queue_for(bob)


def test_two_reviewers_who_disagree_send_the_turn_to_a_third_until_a_majority(settings):
    settings.REVIEW_DOUBLE_SHARE = 1.0
    ann, bob, cat, dan = (UserFactory(is_staff=True) for _ in range(4))
    turn = TurnFactory()
    _label(ann, turn, True)
    _label(bob, turn, False)

    assert _queue_for(ann) == [] and _queue_for(bob) == []
    assert _queue_for(cat) == [turn]
    _label(cat, turn, False)
    assert _queue_for(dan) == []
    assert agreement_report().settled == 1


def test_every_nth_turn_shown_is_a_gold_item_whatever_the_filters(settings):
    settings.REVIEW_GOLD_EVERY = 3
    ann = UserFactory(is_staff=True)
    gold_turn = TurnFactory(app_version="9.9")
    GoldItem.objects.create(turn=gold_turn, is_correct=False)
    ordinary = [TurnFactory() for _ in range(5)]

    shown = []
    for _ in range(4):
        turn = _next_for(ann)
        shown.append(turn)
        _label(ann, turn, True)

    assert shown[2] == gold_turn  # the third: two labels given, the next is gold
    assert gold_turn not in shown[:2] + shown[3:]
    assert set(shown) - {gold_turn} <= set(ordinary)
