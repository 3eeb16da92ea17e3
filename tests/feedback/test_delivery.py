import pytest
from django.core.management import call_command

from feedback import services
from feedback.models import Feedback

pytestmark = pytest.mark.django_db


def _rate(api, turn, **payload):
    response = api.put(f"/api/messages/{turn['message_id']}/feedback/", payload, format="json")
    assert response.status_code in (200, 201), response.content
    return Feedback.objects.get(pk=response.json()["id"])


def test_feedback_on_a_trace_that_never_arrives_is_marked_failed_with_the_reason(
    api, turn_of, settings
):
    settings.FEEDBACK_MAX_ATTEMPTS = 2
    settings.FEEDBACK_RETRY_BASE_S = 0
    turn = turn_of()
    feedback = _rate(api, turn, is_correct=True)
    feedback.turn.trace_id = "tr-00000000000000000000000000000000"
    feedback.turn.save(update_fields=["trace_id"])

    assert services.feedback_deliver(feedback_id=feedback.pk) == "pending"
    assert services.feedback_deliver(feedback_id=feedback.pk) == "failed"
    feedback.refresh_from_db()
    assert feedback.attempts == 2
    assert "TraceNotFound" in feedback.last_error


def test_retry_re_queues_failed_feedback_and_delivers_it(api, turn_of, get_trace, settings):
    settings.FEEDBACK_MAX_ATTEMPTS = 1
    turn = turn_of()
    feedback = _rate(api, turn, is_correct=True)
    real_trace = feedback.turn.trace_id
    feedback.turn.trace_id = "tr-11111111111111111111111111111111"
    feedback.turn.save(update_fields=["trace_id"])
    assert services.feedback_deliver(feedback_id=feedback.pk) == "failed"

    feedback.turn.trace_id = real_trace
    feedback.turn.save(update_fields=["trace_id"])
    get_trace(real_trace)  # exported
    services.feedback_retry(feedback=feedback)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"


def test_a_claimed_row_is_not_delivered_twice_at_once(api, turn_of, get_trace):
    turn = turn_of()
    feedback = _rate(api, turn, is_correct=True)
    get_trace(turn["trace_id"])
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    assert services.feedback_deliver(feedback_id=feedback.pk) is None


def test_a_change_made_during_delivery_is_delivered_next(
    api, turn_of, get_trace, assessments, deliver_until_settled
):
    turn = turn_of()
    feedback = _rate(api, turn, is_correct=True)
    get_trace(turn["trace_id"])
    # Simulate the user changing the vote between the claim and the end of delivery.
    Feedback.objects.filter(pk=feedback.pk).update(version=feedback.version + 1, is_correct=False)
    Feedback.objects.filter(pk=feedback.pk).update(version=feedback.version)
    state = services.feedback_deliver(feedback_id=feedback.pk)
    assert state == "delivered"
    _rate(api, turn, is_correct=False)
    deliver_until_settled()
    (valid,) = assessments(turn["trace_id"])
    assert valid.feedback.value is False


def test_delivery_is_idempotent_with_mlflow(api, turn_of, get_trace, assessments):
    turn = turn_of()
    feedback = _rate(api, turn, rating=4, expected_response="Yes.")
    get_trace(turn["trace_id"])
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    # A crash after logging but before saving would deliver the same version again:
    Feedback.objects.filter(pk=feedback.pk).update(delivery_state="pending", next_attempt_at=None)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    assert sorted(a.name for a in assessments(turn["trace_id"])) == [
        "expected_response",
        "user_rating",
    ]


def test_the_command_delivers_what_is_due_with_progress(api, turn_of, get_trace, capsys):
    turn = turn_of()
    _rate(api, turn, is_correct=False)
    get_trace(turn["trace_id"])
    call_command("deliver_feedback")
    out = capsys.readouterr().out
    assert "[1/1] delivered 1" in out
    assert "delivered 1, failed 0, 0 pending" in out
    assert Feedback.objects.get().delivery_state == "delivered"


@pytest.mark.django_db(transaction=True)
def test_threaded_delivery_delivers_each_row_exactly_once(api, turn_of, get_trace, assessments):
    turns = [turn_of(f"question {i}") for i in range(6)]
    for turn in turns:
        _rate(api, turn, is_correct=True)
    get_trace(turns[-1]["trace_id"])  # flushes every queued trace

    counts = services.feedback_deliver_due(threads=4)

    assert counts == {"delivered": 6}
    for turn in turns:
        assert len(assessments(turn["trace_id"])) == 1


def test_an_edit_during_a_delivery_waits_for_it_instead_of_racing_it(
    api, turn_of, get_trace, assessments
):
    from datetime import timedelta

    from django.utils import timezone

    turn = turn_of()
    get_trace(turn["trace_id"])
    feedback = _rate(api, turn, is_correct=True)
    # A deliverer holds the row (as mid-delivery) when the user changes the vote.
    Feedback.objects.filter(pk=feedback.pk).update(
        leased_until=timezone.now() + timedelta(seconds=60)
    )
    _rate(api, turn, is_correct=False)
    assert services.feedback_deliver(feedback_id=feedback.pk) is None  # no second deliverer

    Feedback.objects.filter(pk=feedback.pk).update(leased_until=None)  # the first one is done
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    (valid,) = assessments(turn["trace_id"])
    assert valid.feedback.value is False


def test_feedback_on_an_untraced_turn_is_kept_and_marked_failed_with_the_reason(
    api, settings, turn_of
):
    from chat import tracing

    settings.TRACING_ENABLED = False
    tracing.configure()
    turn = turn_of()
    assert turn["trace_id"] is None
    feedback = _rate(api, turn, is_correct=True)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "failed"
    feedback.refresh_from_db()
    assert "no MLflow trace" in feedback.last_error


@pytest.mark.django_db(transaction=True)
def test_deliverers_racing_for_one_row_deliver_it_once(api, turn_of, get_trace, assessments):
    """Several delivery processes (threads with their own connections) claim one row at once.

    Run on PostgreSQL by `make test` too, where claims really overlap (SQLite serialises them).
    """
    import threading

    from django.db import connection

    turns = [turn_of(f"raced {i}") for i in range(20)]
    for turn in turns:
        _rate(api, turn, is_correct=False)
    get_trace(turns[-1]["trace_id"])
    rows = list(Feedback.objects.order_by("id").values_list("id", flat=True))
    outcomes = []

    def deliverer(barrier):
        try:
            for feedback_id in rows:
                barrier.wait()
                outcomes.append((feedback_id, services.feedback_deliver(feedback_id=feedback_id)))
        finally:
            connection.close()

    barrier = threading.Barrier(6)
    threads = [threading.Thread(target=deliverer, args=(barrier,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed = sorted(fid for fid, state in outcomes if state is not None)
    assert claimed == rows  # each row claimed by exactly one deliverer
    assert set(Feedback.objects.values_list("attempts", flat=True)) == {1}
    for turn in turns:
        assert [a.feedback.value for a in assessments(turn["trace_id"])] == [False]


def test_a_deliverer_that_outlived_its_lease_leaves_the_row_to_the_one_that_took_it_over(
    api, turn_of, get_trace, assessments, monkeypatch, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from chat import tracing

    turn = turn_of()
    get_trace(turn["trace_id"])
    feedback = _rate(api, turn, is_correct=True)
    sync = tracing.sync_assessments
    later = timezone.now() + timedelta(seconds=settings.FEEDBACK_LEASE_S + 1)
    takeover = {}

    def slow_write(**kwargs):
        # The first deliverer stalls past its lease; a second one claims the row meanwhile and
        # is still writing (its claim is taken, its delivery not yet run) when the first ends.
        monkeypatch.setattr(tracing, "sync_assessments", sync)
        Feedback.objects.filter(pk=feedback.pk).update(
            leased_until=later + timedelta(seconds=settings.FEEDBACK_LEASE_S),
            lease_owner="second-deliverer",
        )
        takeover["written"] = sync(**kwargs)
        return takeover["written"]

    monkeypatch.setattr(tracing, "sync_assessments", slow_write)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "superseded"

    row = Feedback.objects.get(pk=feedback.pk)
    # The second deliverer's lease and the row's state are untouched: it records the result.
    assert row.lease_owner == "second-deliverer" and row.leased_until is not None
    assert row.delivery_state == Feedback.Delivery.PENDING and row.feedback_assessment_id == ""
    assert services.feedback_deliver(feedback_id=feedback.pk) is None  # no third deliverer

    # Once it is done (lease over), the row is delivered once, onto what MLflow already has.
    Feedback.objects.filter(pk=feedback.pk).update(leased_until=None, lease_owner="")
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    (valid,) = assessments(turn["trace_id"])
    assert valid.feedback.value is True
    assert Feedback.objects.get(pk=feedback.pk).feedback_assessment_id == takeover["written"][0]


# --- A vote that changes kind: the trace holds what the row holds, nothing more ----------------


def _held(feedback: Feedback) -> set[tuple[str, object]]:
    """The assessments a row asks for, as (name, value)."""
    feedback.refresh_from_db()
    if feedback.withdrawn:
        return set()
    held = {(feedback.name, feedback.value)} if feedback.name else set()
    if feedback.expected_response:
        held.add(("expected_response", feedback.expected_response))
    return held


def _on_trace(assessments, trace_id: str, user) -> set[tuple[str, object]]:
    """The valid assessments `user` has on the trace, as (name, value); a duplicate fails."""
    mine = [a for a in assessments(trace_id) if a.source.source_id == str(user.pk)]
    pairs = [
        (a.name, a.expectation.value if a.expectation is not None else a.feedback.value)
        for a in mine
    ]
    assert len(pairs) == len(set(pairs)), pairs
    return set(pairs)


@pytest.mark.django_db(transaction=True)
def test_parallel_edits_that_change_the_vote_kind_leave_only_the_row_on_the_trace(
    user, api, turn_of, deliver_until_settled, assessments
):
    """Issue 19: twenty parallel PUTs alternating a thumbs (with an expected answer) and a rating,
    a deliverer running through them, after an earlier wave of edits had been delivered."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from tests.conftest import token_client

    turn = turn_of()
    url = f"/api/messages/{turn['message_id']}/feedback/"
    for is_correct in (True, False, True, False):  # the earlier wave, each edit delivered
        _rate(api, turn, is_correct=is_correct, expected_response="The earlier answer")
        deliver_until_settled()

    stop = threading.Event()

    def deliverer():
        try:
            while not stop.is_set():
                services.feedback_deliver_due()
        finally:
            connection.close()

    def put(body):
        try:
            response = token_client(user).put(url, body, format="json")
            assert response.status_code == 200, response.content
        finally:
            connection.close()

    bodies = [
        {"is_correct": i % 4 == 0, "expected_response": f"answer {i}"}
        if i % 2 == 0
        else {"rating": 1 + i % 5}
        for i in range(19)
    ]
    running = threading.Thread(target=deliverer)
    running.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, bodies))
        put({"rating": 3})  # the wave's last word, as in the issue
    finally:
        stop.set()
        running.join()
    deliver_until_settled()

    feedback = Feedback.objects.get()
    assert (feedback.rating, feedback.is_correct, feedback.delivery_state) == (3, None, "delivered")
    assert _on_trace(assessments, turn["trace_id"], user) == _held(feedback) == {("user_rating", 3)}


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param(
            [{"is_correct": True}, {"is_correct": False}, {"rating": 4}],
            id="a-thumbs-replaced-by-a-rating",
        ),
        pytest.param(
            [{"rating": 2}, {"rating": 5}, {"is_correct": True}],
            id="a-rating-replaced-by-a-thumbs",
        ),
        pytest.param(
            [{"is_correct": True}, {"rating": 1}, {"is_correct": False}, {"rating": 3}],
            id="back-and-forth",
        ),
        pytest.param(
            [
                {"is_correct": False},
                {"is_correct": False, "expected_response": "Ten days."},
                {"is_correct": False, "expected_response": "Twelve days."},
                {"is_correct": False},
            ],
            id="an-expected-answer-added-changed-then-withdrawn",
        ),
    ],
)
def test_each_delivered_edit_leaves_on_the_trace_exactly_what_the_row_holds(
    edits, user, api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    for body in edits:
        feedback = _rate(api, turn, **body)
        deliver_until_settled()
        assert _on_trace(assessments, turn["trace_id"], user) == _held(feedback), body


def test_withdrawing_a_vote_that_changed_kind_leaves_nothing_of_it(
    user, api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    for body in ({"is_correct": True}, {"is_correct": False}, {"rating": 2}, {"rating": 4}):
        _rate(api, turn, **body, expected_response="Ten days.")
        deliver_until_settled()
    assert api.delete(f"/api/messages/{turn['message_id']}/feedback/").status_code == 204
    deliver_until_settled()

    assert assessments(turn["trace_id"], include_invalid=True) == []


def test_an_edit_landing_during_a_delivery_that_changes_the_kind_is_reconciled_next(
    user, api, turn_of, get_trace, deliver_until_settled, assessments, monkeypatch
):
    from chat import tracing

    turn = turn_of()
    get_trace(turn["trace_id"])
    _rate(api, turn, is_correct=True)
    deliver_until_settled()
    feedback = _rate(api, turn, is_correct=False)
    sync = tracing.sync_assessments

    def write_then_the_user_edits(**kwargs):
        written = sync(**kwargs)  # MLflow has the thumbs-down; the row is not recorded yet
        _rate(api, turn, rating=3)
        return written

    monkeypatch.setattr(tracing, "sync_assessments", write_then_the_user_edits)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "pending"
    monkeypatch.setattr(tracing, "sync_assessments", sync)
    deliver_until_settled()

    assert _on_trace(assessments, turn["trace_id"], user) == _held(feedback)
    assert _held(feedback) == {("user_rating", 3)}


def test_two_deliverers_at_once_leave_the_trace_as_the_row_whoever_writes_last(
    user, api, turn_of, get_trace, deliver_until_settled, assessments, monkeypatch, settings
):
    """The first deliverer stalls past its lease (a tracking server that hangs); meanwhile the
    user changes the vote and a second deliverer delivers that. The first one's stale write lands
    last."""
    from datetime import timedelta

    from django.utils import timezone

    from chat import tracing

    turn = turn_of()
    get_trace(turn["trace_id"])
    _rate(api, turn, is_correct=True)
    deliver_until_settled()
    feedback = _rate(api, turn, rating=4)
    sync = tracing.sync_assessments
    second = {}

    def stall_past_the_lease(**kwargs):
        monkeypatch.setattr(tracing, "sync_assessments", sync)
        _rate(api, turn, is_correct=False)
        later = timezone.now() + timedelta(seconds=settings.FEEDBACK_LEASE_S + 1)
        second["state"] = services.feedback_deliver(feedback_id=feedback.pk, now=later)
        return sync(**kwargs)  # the rating, written over what the second one delivered

    monkeypatch.setattr(tracing, "sync_assessments", stall_past_the_lease)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "superseded"
    assert second["state"] == "delivered"
    deliver_until_settled()

    feedback.refresh_from_db()
    assert feedback.delivery_state == "delivered"
    assert _on_trace(assessments, turn["trace_id"], user) == _held(feedback)
    assert _held(feedback) == {("response_is_correct", False)}


@pytest.mark.slow
def test_over_a_tracking_server_a_vote_that_changes_kind_leaves_only_the_row(
    user, api, turn_of, deliver_until_settled, assessments, mlflow_server
):
    """The REST store must show superseded assessments and restore them on delete as the SQL
    store does, or the reconcile would miss them there."""
    from chat import tracing
    from feedback import audit

    assert tracing.configure(tracking_uri=mlflow_server.url, experiment_name="vote-kinds")
    turn = turn_of()
    edits = (
        {"is_correct": True},
        {"rating": 4},
        {"rating": 5},
        {"is_correct": False},
        {"rating": 2},
    )
    for body in edits:
        feedback = _rate(api, turn, **body)
        deliver_until_settled()
        assert _on_trace(assessments, turn["trace_id"], user) == _held(feedback), body

    # Delivered again (a crash before the row was saved): the rating, back as 2.0, is left alone.
    every = [a.assessment_id for a in assessments(turn["trace_id"], include_invalid=True)]
    Feedback.objects.filter(pk=feedback.pk).update(delivery_state="pending", next_attempt_at=None)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "delivered"
    assert [a.assessment_id for a in assessments(turn["trace_id"], include_invalid=True)] == every
    assert audit.feedback_audit().problems == {}
