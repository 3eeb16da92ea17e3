import pytest

from chat.models import Message, Turn
from feedback.models import Feedback

pytestmark = pytest.mark.django_db


def test_seed_feedback_sent_right_after_the_turn_lands_on_that_turns_trace(
    api, user, turn_of, deliver_until_settled, assessments
):
    turn = turn_of(**{"X-Request-ID": "req-fb-1"})
    response = api.post(
        "/api/chat_feedback?client_request_id=req-fb-1",
        {"is_correct": False, "comment": "It ignored my order number"},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["delivery_state"] == "pending"
    assert (body["trace_id"], body["message_id"]) == (turn["trace_id"], turn["message_id"])

    deliver_until_settled()  # the trace is still in MLflow's export queue at first

    (assessment,) = assessments(turn["trace_id"])
    assert assessment.name == "response_is_correct"
    assert assessment.feedback.value is False
    assert assessment.rationale == "It ignored my order number"
    assert assessment.source.source_type == "HUMAN"
    assert assessment.source.source_id == str(user.id)
    feedback = Feedback.objects.get()
    assert feedback.delivery_state == "delivered"
    assert feedback.feedback_assessment_id == assessment.assessment_id


def test_the_seed_path_without_the_api_prefix_works_too(api, turn_of):
    turn_of(**{"X-Request-ID": "req-seed"})
    response = api.post(
        "/chat_feedback?client_request_id=req-seed", {"is_correct": True}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["is_correct"] is True


def test_changing_a_vote_leaves_one_valid_feedback_with_the_old_one_superseded(
    api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    url = f"/api/messages/{turn['message_id']}/feedback/"
    assert api.put(url, {"is_correct": True}, format="json").status_code == 201
    deliver_until_settled()
    changed = api.put(url, {"is_correct": False, "comment": "on second look"}, format="json")
    assert changed.status_code == 200
    deliver_until_settled()

    (valid,) = assessments(turn["trace_id"])
    assert (valid.feedback.value, valid.rationale) == (False, "on second look")
    every = assessments(turn["trace_id"], include_invalid=True)
    (old,) = [a for a in every if a.assessment_id != valid.assessment_id]
    assert old.valid is False and old.feedback.value is True
    assert valid.overrides == old.assessment_id
    assert Feedback.objects.count() == 1 and Feedback.objects.get().version == 2


def test_a_rating_with_a_corrected_answer_is_a_feedback_and_an_expectation(
    api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    response = api.put(
        f"/api/messages/{turn['message_id']}/feedback/",
        {"rating": 2, "comment": "vague", "expected_response": "Refunds take 5 days."},
        format="json",
    )
    assert response.status_code == 201
    deliver_until_settled()

    found = {a.name: a for a in assessments(turn["trace_id"])}
    assert set(found) == {"user_rating", "expected_response"}
    assert found["user_rating"].feedback.value == 2
    assert found["expected_response"].expectation.value == "Refunds take 5 days."
    assert found["expected_response"].source.source_type == "HUMAN"


def test_get_reads_it_back_and_delete_withdraws_it_from_mlflow(
    api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    url = f"/api/messages/{turn['message_id']}/feedback/"
    api.put(url, {"rating": 5}, format="json")
    assert api.get(url).json()["rating"] == 5
    deliver_until_settled()
    assert len(assessments(turn["trace_id"])) == 1

    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404
    deliver_until_settled()
    assert assessments(turn["trace_id"]) == []
    assert Feedback.objects.get().withdrawn is True  # kept: the withdrawal itself is a fact


def test_rating_someone_elses_turn_is_404_on_both_endpoints(api, other_api, turn_of):
    theirs = turn_of(client=other_api, **{"X-Request-ID": "theirs-1"})
    seed = api.post(
        "/api/chat_feedback?client_request_id=theirs-1", {"is_correct": True}, format="json"
    )
    put = api.put(f"/api/messages/{theirs['message_id']}/feedback/", {"rating": 1}, format="json")
    get = api.get(f"/api/messages/{theirs['message_id']}/feedback/")
    assert (seed.status_code, put.status_code, get.status_code) == (404, 404, 404)
    assert Feedback.objects.count() == 0


def test_a_question_message_id_or_unknown_id_is_404(api, turn_of):
    turn_of()
    question = Message.objects.get(role="user")
    assert (
        api.put(f"/api/messages/{question.id}/feedback/", {"rating": 3}, format="json").status_code
        == 404
    )
    assert (
        api.put("/api/messages/999999/feedback/", {"rating": 3}, format="json").status_code == 404
    )


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"is_correct": True, "rating": 3},
        {"rating": 0},
        {"rating": 6},
        {"is_correct": "yes"},
        {"is_correct": 1},
        {"rating": 3, "stars": 5},
        {"rating": 3, "comment": "x" * 5001},
    ],
)
def test_bad_feedback_is_400_and_stores_nothing(api, turn_of, payload):
    turn = turn_of()
    response = api.put(f"/api/messages/{turn['message_id']}/feedback/", payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"
    assert Feedback.objects.count() == 0


@pytest.mark.parametrize(
    ("query", "payload"),
    [
        ("", {"is_correct": True}),
        ("?client_request_id=bad%20id", {"is_correct": True}),
        ("?client_request_id=req-x", {"comment": "no vote"}),
        ("?client_request_id=req-x", {"is_correct": "false"}),
    ],
)
def test_bad_seed_feedback_is_400(api, turn_of, query, payload):
    turn_of(**{"X-Request-ID": "req-x"})
    response = api.post(f"/api/chat_feedback{query}", payload, format="json")
    assert response.status_code == 400
    assert Feedback.objects.count() == 0


def test_a_failed_turn_cannot_be_rated(api, llm_server):
    llm_server.mode = "error"
    api.post("/api/chat/", {"message": "hi"}, format="json", headers={"X-Request-ID": "failed-1"})
    response = api.post(
        "/api/chat_feedback?client_request_id=failed-1", {"is_correct": False}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"] == "turn_not_rateable"


def test_feedback_needs_credentials(db, client):
    response = client.post(
        "/api/chat_feedback?client_request_id=x",
        {"is_correct": True},
        content_type="application/json",
    )
    assert response.status_code == 401


def test_the_request_answers_from_the_database_even_with_mlflow_unreachable(api, turn_of, settings):
    from chat import tracing
    from tests.mlflow_server import free_port

    turn = turn_of()
    tracing.configure(tracking_uri=f"http://127.0.0.1:{free_port()}", experiment_name="gone")
    response = api.put(
        f"/api/messages/{turn['message_id']}/feedback/", {"is_correct": True}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["delivery_state"] == "pending"
    assert Turn.objects.get().feedback.get().delivery_state == "pending"


def test_a_withdrawn_correction_does_not_come_back_with_a_new_vote(
    api, turn_of, deliver_until_settled, assessments
):
    turn = turn_of()
    url = f"/api/messages/{turn['message_id']}/feedback/"
    api.put(url, {"rating": 1, "expected_response": "Refunds take 5 days."}, format="json")
    deliver_until_settled()
    assert api.delete(url).status_code == 204
    deliver_until_settled()

    response = api.post(
        f"/chat_feedback?client_request_id={turn['client_request_id']}",
        {"is_correct": True},
        format="json",
    )
    deliver_until_settled()

    assert response.status_code == 200, response.content
    assert response.json()["expected_response"] == ""
    assert [a.name for a in assessments(turn["trace_id"])] == ["response_is_correct"]
