import pytest

from chat.models import ChatSession, Message, Turn

pytestmark = pytest.mark.django_db


def test_listing_shows_only_your_sessions_most_recently_active_first_and_paginated(api, other_api):
    other_api.post("/api/sessions/", {"title": "not yours"}, format="json")
    ids = [
        api.post("/api/sessions/", {"title": f"s{i}"}, format="json").json()["id"] for i in range(3)
    ]
    api.post("/api/chat/", {"message": "bump", "session_id": ids[0]}, format="json")

    page = api.get("/api/sessions/?page_size=2").json()
    assert page["count"] == 3
    assert [s["title"] for s in page["results"]] == ["s0", "s2"]
    assert page["next"] is not None
    rest = api.get(page["next"]).json()
    assert [s["title"] for s in rest["results"]] == ["s1"]


def test_a_session_reads_back_with_its_messages_in_order(api):
    first = api.post("/api/chat/", {"message": "question one"}, format="json").json()
    api.post(
        "/api/chat/", {"message": "question two", "session_id": first["session_id"]}, format="json"
    )
    body = api.get(f"/api/sessions/{first['session_id']}/").json()
    assert body["title"] == "question one"
    assert [(m["role"], m["content"][:12]) for m in body["messages"]] == [
        ("user", "question one"),
        ("assistant", "You asked: “"),
        ("user", "question two"),
        ("assistant", "You asked: “"),
    ]
    assert body["messages"][1]["trace_id"] == first["trace_id"]


def test_rename_and_delete(api):
    session_id = api.post("/api/sessions/", {}, format="json").json()["id"]
    renamed = api.patch(f"/api/sessions/{session_id}/", {"title": "Billing"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["title"] == "Billing"
    assert api.delete(f"/api/sessions/{session_id}/").status_code == 204
    assert ChatSession.objects.get(pk=session_id).deleted_at is not None


def test_deleting_a_session_hides_it_from_its_owner_and_keeps_feedback_for_staff(api, admin_user):
    from feedback import services as feedback_services
    from feedback.models import Feedback

    body = api.post("/api/chat/", {"message": "hi"}, format="json").json()
    feedback_services.feedback_submit(user=admin_user, turn=Turn.objects.get(), is_correct=False)
    assert api.delete(f"/api/sessions/{body['session_id']}/").status_code == 204

    assert api.get(f"/api/sessions/{body['session_id']}/").status_code == 404
    assert api.get("/api/sessions/").json()["count"] == 0
    again = api.post(
        "/api/chat/", {"message": "more", "session_id": body["session_id"]}, format="json"
    )
    assert again.status_code == 404
    rate = api.put(f"/api/messages/{body['message_id']}/feedback/", {"rating": 3}, format="json")
    assert rate.status_code == 404
    assert Turn.objects.count() == 1 and Message.objects.count() == 2
    assert Feedback.objects.get().user == admin_user  # the staff label survives


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_someone_elses_session_is_404_for_every_method(api, other_api, method):
    theirs = other_api.post("/api/sessions/", {"title": "private"}, format="json").json()["id"]
    response = getattr(api, method)(f"/api/sessions/{theirs}/", {"title": "x"}, format="json")
    assert response.status_code == 404
    assert ChatSession.objects.get(pk=theirs).title == "private"


def test_renaming_with_an_unknown_field_or_an_overlong_title_is_400(api):
    session_id = api.post("/api/sessions/", {"title": "keep"}, format="json").json()["id"]
    for payload in ({"title": "x" * 201}, {"title": "ok", "owner": 1}, {}):
        response = api.patch(f"/api/sessions/{session_id}/", payload, format="json")
        assert response.status_code == 400, payload
    assert ChatSession.objects.get(pk=session_id).title == "keep"


def test_sessions_need_credentials(db, client):
    assert client.get("/api/sessions/").status_code == 401
