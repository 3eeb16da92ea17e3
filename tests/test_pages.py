"""The web page's own views: sign-in and sign-out wording, and the styled 404."""

import uuid

import pytest

from tests.factories import SessionFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-123"
ENDED = "Your session has ended"
SIGNED_IN_COOKIE = "was_signed_in"  # chatproject.pages.SIGNED_IN_COOKIE


def sign_in(client, username, password=PASSWORD):
    return client.post("/accounts/login/", {"username": username, "password": password})


def test_a_first_visit_is_not_told_its_session_ended(client):
    page = client.get("/chat/", follow=True)
    assert page.templates[0].name == "registration/login.html"
    assert ENDED not in page.content.decode()


def test_a_sign_in_that_lapsed_is_told_its_session_ended(client):
    UserFactory(username="alice")
    response = sign_in(client, "alice")
    assert response.status_code == 302 and SIGNED_IN_COOKIE in response.cookies
    client.cookies.pop("sessionid")  # the browser dropped the expired session cookie
    assert ENDED in client.get("/chat/", follow=True).content.decode()


def test_a_wrong_password_shows_one_banner_even_after_a_lapsed_sign_in(client):
    UserFactory(username="alice")
    client.cookies[SIGNED_IN_COOKIE] = "1"
    html = client.post(
        "/accounts/login/?next=/chat/", {"username": "alice", "password": "wrong"}
    ).content.decode()
    assert "That username and password do not match" in html
    assert ENDED not in html and html.count('role="alert"') + html.count('role="status"') == 1


def test_signing_out_confirms_it_and_forgets_the_sign_in(client):
    UserFactory(username="alice")
    sign_in(client, "alice")
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"
    assert response.cookies[SIGNED_IN_COOKIE]["max-age"] == 0
    html = client.get("/accounts/login/").content.decode()
    assert "You are signed out." in html
    assert ENDED not in client.get("/chat/", follow=True).content.decode()


def test_someone_elses_conversation_and_an_unknown_page_are_the_styled_404(client):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    session = SessionFactory(owner=alice, title="alice's secret")
    client.force_login(bob)
    for url in (f"/chat/{session.id}/", f"/chat/{uuid.uuid4()}/", "/no/such/page/"):
        page = client.get(url)
        assert page.status_code == 404
        html = page.content.decode()
        assert "Page not found" in html and 'href="/chat/"' in html and "chat.css" in html
        assert "alice's secret" not in html
