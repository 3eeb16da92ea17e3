import pytest
from django.contrib.auth.models import Permission

from chat.models import Turn
from feedback.models import Feedback
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

TURNS_URL = "/admin/chat/turn/"


@pytest.fixture
def exported_turns(api, turn_of, get_trace):
    """Two completed turns whose traces are already in MLflow (staff label older turns)."""
    bodies = [turn_of("first question"), turn_of("second question")]
    for body in bodies:
        get_trace(body["trace_id"])
    return list(Turn.objects.order_by("id"))


def _action(admin_client, action, turns, **extra):
    return admin_client.post(
        TURNS_URL,
        {"action": action, "_selected_action": [t.pk for t in turns], **extra},
        follow=True,
    )


@pytest.mark.parametrize(("action", "value"), [("mark_correct", True), ("mark_incorrect", False)])
def test_marking_turns_logs_feedback_with_the_staff_member_as_source(
    admin_client, admin_user, exported_turns, assessments, action, value
):
    response = _action(admin_client, action, exported_turns)

    assert response.status_code == 200
    assert "2 turn(s): 2 delivered to MLflow" in response.content.decode()
    for turn in exported_turns:
        (assessment,) = assessments(turn.trace_id)
        assert (assessment.name, assessment.feedback.value) == ("response_is_correct", value)
        assert assessment.source.source_type == "HUMAN"
        assert assessment.source.source_id == str(admin_user.id)
    assert set(Feedback.objects.values_list("user", flat=True)) == {admin_user.id}


def test_set_expected_response_asks_for_it_then_logs_expectations(
    admin_client, admin_user, exported_turns, assessments
):
    form = _action(admin_client, "set_expected_response", exported_turns)
    assert form.status_code == 200
    assert b'name="expected_response"' in form.content

    done = _action(
        admin_client,
        "set_expected_response",
        exported_turns,
        apply="1",
        expected_response="Go to Settings > Security > Reset password.",
    )
    assert "2 delivered to MLflow" in done.content.decode()
    for turn in exported_turns:
        (expectation,) = assessments(turn.trace_id)
        assert expectation.name == "expected_response"
        assert expectation.expectation.value == "Go to Settings > Security > Reset password."
        assert expectation.source.source_id == str(admin_user.id)


def test_expected_response_keeps_an_earlier_staff_vote(admin_client, exported_turns, assessments):
    _action(admin_client, "mark_incorrect", exported_turns[:1])
    _action(
        admin_client, "set_expected_response", exported_turns[:1], apply="1", expected_response="X"
    )
    names = sorted(a.name for a in assessments(exported_turns[0].trace_id))
    assert names == ["expected_response", "response_is_correct"]


def test_retry_delivery_delivers_failed_feedback(admin_client, api, exported_turns, settings):
    settings.FEEDBACK_MAX_ATTEMPTS = 1
    turn = exported_turns[0]
    message_id = turn.messages.get(role="assistant").id
    api.put(f"/api/messages/{message_id}/feedback/", {"is_correct": True}, format="json")
    feedback = Feedback.objects.get()
    Feedback.objects.filter(pk=feedback.pk).update(delivery_state="failed", last_error="boom")

    response = admin_client.post(
        "/admin/feedback/feedback/",
        {"action": "retry_delivery", "_selected_action": [feedback.pk]},
        follow=True,
    )

    assert "Retried 1 feedback: 1 delivered, 0 not delivered" in response.content.decode()
    feedback.refresh_from_db()
    assert (feedback.delivery_state, feedback.last_error) == ("delivered", "")


def test_staff_without_feedback_permissions_do_not_get_the_label_actions(client, exported_turns):
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_turn"))
    client.force_login(staff)

    page = client.get(TURNS_URL)
    assert page.status_code == 200
    assert b"mark_correct" not in page.content
    response = _action(client, "mark_correct", exported_turns)
    assert Feedback.objects.count() == 0
    assert response.status_code == 200


def test_staff_with_feedback_permissions_get_them(client, exported_turns):
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_turn", "add_feedback", "change_feedback"])
    )
    client.force_login(staff)
    assert b"mark_correct" in client.get(TURNS_URL).content


def test_admin_pages_list_search_and_filter(admin_client, exported_turns):
    turn = exported_turns[0]
    assert (
        turn.client_request_id.encode()
        in admin_client.get(f"{TURNS_URL}?q={turn.client_request_id}").content
    )
    assert admin_client.get(f"{TURNS_URL}?status__exact=completed").status_code == 200
    detail = admin_client.get(f"{TURNS_URL}{turn.pk}/change/")
    assert turn.trace_id.encode() in detail.content
    sessions = admin_client.get(f"/admin/chat/chatsession/?q={turn.client_request_id}")
    assert sessions.status_code == 200 and b"first question" in sessions.content
    assert (
        admin_client.get("/admin/feedback/feedback/?delivery_state__exact=failed").status_code
        == 200
    )


def test_turns_list_shows_question_answer_and_the_users_feedback_newest_first(
    admin_client, django_assert_max_num_queries
):
    from tests.factories import FeedbackFactory, SessionFactory, answered_turn

    owner = UserFactory(username="erin")
    session = SessionFactory(owner=owner)
    older, _ = answered_turn(session=session, question="How do refunds work?", answer="Slowly.")
    newer, _ = answered_turn(session=session, question="Q" * 200, answer="A short answer.")
    FeedbackFactory(turn=older, user=owner, is_correct=False, comment="Too vague")
    for _ in range(20):
        answered_turn(session=session)

    # One query for the rows, whatever their number, and the lifecycle's few for the whole page.
    with django_assert_max_num_queries(17):
        page = admin_client.get(TURNS_URL).content.decode()

    assert "How do refunds work?" in page and "Slowly." in page
    assert "bad · “Too vague”" in page
    assert "Q" * 90 + "…" in page and "Q" * 91 not in page
    assert page.index("A short answer.") < page.index("Slowly.")  # newest first
    assert 'name="_save"' not in admin_client.get(f"{TURNS_URL}{older.pk}/change/").content.decode()
