"""Per-user limits on chat and feedback, per-username and per-address limits on sign-in."""

import pytest
from django.core.cache import cache

from chat.models import Turn
from tests.conftest import token_client
from tests.factories import SessionFactory, UserFactory, answered_turn

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_counts():
    cache.clear()
    yield
    cache.clear()


def test_chat_over_the_per_user_rate_is_a_429_with_retry_after(api, other_api, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "chat": "3/min"}

    answers = [api.post("/api/chat/", {"message": f"q{i}"}, format="json") for i in range(4)]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert 0 < int(refused["Retry-After"]) <= 60
    assert refused.json()["error"] == "throttled"
    assert refused.json()["detail"].startswith("Too many requests; slow down.")
    assert Turn.objects.count() == 3  # the refused turn never started
    # Counted per user: someone else is not slowed down by it.
    assert other_api.post("/api/chat/", {"message": "hi"}, format="json").status_code == 200


def test_a_throttled_turn_is_429_before_its_body_is_validated(api, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "chat": "1/min"}

    codes = [
        api.post("/api/chat/", body, format="json").status_code
        for body in ({"message": "q"}, {"message": ""}, {"nonsense": 1})
    ]

    assert codes == [200, 429, 429]
    assert Turn.objects.count() == 1


def test_feedback_has_its_own_rate(api, user, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "feedback": "2/min", "chat": "1/min"}
    _, answer = answered_turn(session=SessionFactory(owner=user))
    url = f"/api/messages/{answer.id}/feedback/"

    codes = [api.put(url, {"rating": r}, format="json").status_code for r in (3, 4, 5)]

    assert codes == [201, 200, 429]
    assert api.post("/api/chat/", {"message": "still mine"}, format="json").status_code == 200


def test_an_empty_rate_turns_a_throttle_off(api, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "chat": ""}

    codes = {
        api.post("/api/chat/", {"message": f"q{i}"}, format="json").status_code for i in range(5)
    }

    assert codes == {200}


def test_counts_are_shared_through_the_cache_not_per_process(user, mlflow_experiment, settings):
    """Two clients (think: two gunicorn workers) for one user share one count."""
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "chat": "2/min"}
    first, second = token_client(user), token_client(user)

    codes = [
        c.post("/api/chat/", {"message": "x"}, format="json").status_code
        for c in (first, second, first)
    ]

    assert codes == [200, 200, 429]
    assert settings.CACHES["default"]["BACKEND"].endswith("DatabaseCache")


def sign_in(client, username, password="wrong", address="10.0.0.1"):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_sign_in_attempts_are_limited_per_username(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "sign_in": "3/min"}
    UserFactory(username="carol")

    codes = [sign_in(client, "carol", address=f"10.0.0.{i}").status_code for i in range(4)]
    right_password_too_late = sign_in(client, "carol", "pw-for-tests-123", address="10.0.0.9")

    assert codes == [200, 200, 200, 429]
    assert right_password_too_late.status_code == 429
    assert "Too many sign-in attempts. Try again in" in right_password_too_late.content.decode()
    assert int(right_password_too_late["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session


def test_sign_in_attempts_are_limited_per_address(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "sign_in_ip": "2/min"}

    codes = [sign_in(client, f"guess{i}").status_code for i in range(3)]
    from_elsewhere = sign_in(client, "guess9", address="10.9.9.9")
    spoofed = client.post(
        "/accounts/login/",
        {"username": "guess10", "password": "x"},
        REMOTE_ADDR="10.0.0.1",
        HTTP_X_FORWARDED_FOR="1.2.3.4",
    )

    assert codes == [200, 200, 429]
    assert from_elsewhere.status_code == 200
    assert spoofed.status_code == 429  # X-Forwarded-For is not trusted without NUM_PROXIES


def test_a_throttled_sign_in_never_checks_the_password(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "sign_in": "1/min"}
    UserFactory(username="dave")
    sign_in(client, "dave")

    right = sign_in(client, "dave", "pw-for-tests-123").content.decode()
    wrong = sign_in(client, "dave", "nope").content.decode()

    assert "do not match" not in right and "do not match" not in wrong


def test_the_admin_signs_in_through_the_throttled_page(client):
    response = client.get("/admin/login/?next=/admin/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/admin/"
