"""Deleting feedback for good (`services.feedback_delete`, the admin's delete), against a real
MLflow store: no assessment outlives its row, superseded ones included."""

import pytest

from chat import tracing
from feedback import services
from feedback.models import Feedback

pytestmark = pytest.mark.django_db

FEEDBACK_URL = "/admin/feedback/feedback/"


@pytest.fixture
def rated(api, turn_of, deliver_until_settled):
    """Two answers, each rated, the first one changed once (MLflow keeps the old vote)."""
    bodies = [turn_of("first"), turn_of("second")]
    for body in bodies:
        url = f"/api/messages/{body['message_id']}/feedback/"
        payload = {"rating": 2, "comment": "wrong", "expected_response": "the fix"}
        assert api.put(url, payload, format="json").status_code == 201
    deliver_until_settled()
    url = f"/api/messages/{bodies[0]['message_id']}/feedback/"
    payload = {"rating": 3, "comment": "less wrong", "expected_response": "the fix"}
    assert api.put(url, payload, format="json").status_code == 200
    deliver_until_settled()
    return [
        (body["trace_id"], Feedback.objects.get(turn__trace_id=body["trace_id"])) for body in bodies
    ]


def test_feedback_delete_removes_every_assessment_of_the_row_then_the_row(rated, assessments):
    trace_id, feedback = rated[0]
    assert len(assessments(trace_id, include_invalid=True)) == 3  # vote, old vote, expectation

    assert services.feedback_delete(feedback=feedback) == 3

    assert assessments(trace_id, include_invalid=True) == []
    assert not Feedback.objects.filter(pk=feedback.pk).exists()
    other_trace, _ = rated[1]
    assert len(assessments(other_trace)) == 2


def test_feedback_never_sent_to_mlflow_is_deleted_without_calling_it(api, turn_of, monkeypatch):
    body = turn_of()
    url = f"/api/messages/{body['message_id']}/feedback/"
    assert api.put(url, {"is_correct": True}, format="json").status_code == 201

    def unreachable(**kwargs):
        raise AssertionError("no MLflow call expected")

    monkeypatch.setattr(tracing, "erase_assessments", unreachable)
    assert services.feedback_delete(feedback=Feedback.objects.get()) == 0
    assert not Feedback.objects.exists()


def test_with_mlflow_down_nothing_is_deleted(rated, monkeypatch, settings):
    import mlflow

    name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=name)
    _, feedback = rated[0]
    with pytest.raises(tracing.TrackingUnavailable):
        services.feedback_delete(feedback=feedback)
    assert Feedback.objects.filter(pk=feedback.pk).exists()


def test_feedback_deleted_while_it_is_being_delivered_is_taken_back_out(
    api, turn_of, get_trace, assessments, monkeypatch
):
    body = turn_of()
    get_trace(body["trace_id"])
    url = f"/api/messages/{body['message_id']}/feedback/"
    assert api.put(url, {"is_correct": True, "comment": "mine"}, format="json").status_code == 201
    feedback = Feedback.objects.get()
    sync = tracing.sync_assessments

    def delete_mid_delivery(**kwargs):
        written = sync(**kwargs)
        Feedback.objects.filter(pk=feedback.pk).delete()  # feedback_delete saw nothing sent yet
        return written

    monkeypatch.setattr(tracing, "sync_assessments", delete_mid_delivery)
    assert services.feedback_deliver(feedback_id=feedback.pk) == "deleted"
    assert assessments(body["trace_id"], include_invalid=True) == []


def test_the_admin_delete_removes_the_assessments(admin_client, rated, assessments):
    trace_id, feedback = rated[0]
    response = admin_client.post(
        f"{FEEDBACK_URL}{feedback.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert "was deleted successfully" in response.content.decode()
    assert assessments(trace_id, include_invalid=True) == []
    assert not Feedback.objects.filter(pk=feedback.pk).exists()


def test_the_admins_bulk_delete_removes_the_assessments(admin_client, rated, assessments):
    response = admin_client.post(
        FEEDBACK_URL,
        {"action": "delete_selected", "_selected_action": [f.pk for _, f in rated], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    assert not Feedback.objects.exists()
    for trace_id, _ in rated:
        assert assessments(trace_id, include_invalid=True) == []


def test_the_admin_delete_with_mlflow_down_keeps_the_row_and_says_so(admin_client, rated):
    import mlflow

    name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=name)
    _, feedback = rated[0]
    response = admin_client.post(
        f"{FEEDBACK_URL}{feedback.pk}/delete/", {"post": "yes"}, follow=True
    )
    page = response.content.decode()
    assert "Not deleted: MLflow did not answer" in page
    assert "was deleted successfully" not in page
    assert Feedback.objects.filter(pk=feedback.pk).exists()
