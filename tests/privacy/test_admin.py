import pytest
from django.contrib.auth import get_user_model

from chat import tracing
from chat.models import Turn
from privacy.models import Erasure

pytestmark = pytest.mark.django_db

USERS_URL = "/admin/auth/user/"


def test_the_erase_action_erases_each_selected_user(admin_client, admin_user, erasable):
    user_id = erasable["user"].pk
    response = admin_client.post(
        USERS_URL,
        {"action": "erase_users", "_selected_action": [user_id, admin_user.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "Erased 1 user(s): 18 database row(s) and 3 MLflow trace(s) removed" in page
    assert "1 verified through MLflow search" in page and "your own account was skipped" in page
    erasure = Erasure.objects.get()
    assert (erasure.via, erasure.requested_by_id) == ("admin", admin_user.pk)
    assert tracing.user_trace_ids(user_id=user_id) == []
    assert get_user_model().objects.filter(pk=admin_user.pk).exists()


def test_deleting_a_user_in_the_admin_is_an_erasure(admin_client, erasable):
    from django.contrib.admin.models import LogEntry

    user = erasable["user"]
    response = admin_client.post(f"{USERS_URL}{user.pk}/delete/", {"post": "yes"}, follow=True)

    assert response.status_code == 200
    # The admin logs the deletion, naming the user, before it deletes: that entry goes too.
    assert not LogEntry.objects.filter(object_repr=user.username).exists()
    assert Erasure.objects.get().rows_removed["admin_log"] == 1
    assert not Turn.objects.filter(user_id=user.pk).exists()
    assert Erasure.objects.get().state == Erasure.State.COMPLETED
    assert tracing.user_trace_ids(user_id=user.pk) == []


def test_bulk_delete_of_users_erases_them_too(admin_client, user, other_user, api, turn_of):
    turn_of("one")
    response = admin_client.post(
        USERS_URL,
        {"action": "delete_selected", "_selected_action": [user.pk, other_user.pk], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    assert set(Erasure.objects.values_list("subject_user_id", flat=True)) == {
        user.pk,
        other_user.pk,
    }
    assert tracing.user_trace_ids(user_id=user.pk) == []


def test_erasure_records_are_listed_read_only(admin_client, erasable):
    admin_client.post(
        USERS_URL, {"action": "erase_users", "_selected_action": [erasable["user"].pk]}
    )
    erasure = Erasure.objects.get()
    listing = admin_client.get("/admin/privacy/erasure/").content.decode()
    assert "Completed" in listing
    detail = admin_client.get(f"/admin/privacy/erasure/{erasure.pk}/change/").content.decode()
    assert 'name="_save"' not in detail
    assert admin_client.get(f"/admin/privacy/erasure/{erasure.pk}/delete/").status_code == 403


def test_the_finish_action_completes_an_erasure_left_pending(admin_client, erasable, settings):
    import mlflow

    name = mlflow.MlflowClient().get_experiment(tracing.experiment_id()).name
    tracing.configure(tracking_uri="http://127.0.0.1:9", experiment_name=name)
    page = admin_client.post(
        USERS_URL, {"action": "erase_users", "_selected_action": [erasable["user"].pk]}, follow=True
    ).content.decode()
    assert "1 still pending MLflow" in page
    erasure = Erasure.objects.get()
    assert erasure.state == Erasure.State.PENDING_MLFLOW

    assert tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI, experiment_name=name)
    page = admin_client.post(
        "/admin/privacy/erasure/",
        {"action": "finish_erasures", "_selected_action": [erasure.pk]},
        follow=True,
    ).content.decode()
    assert "1 of 1 pending erasure(s) completed and verified" in page
    erasure.refresh_from_db()
    assert erasure.state == Erasure.State.COMPLETED
