from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def ids(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {t["trace_id"] for t in response.json()["results"]}


def traces_of(world, *indexes) -> set[str]:
    return {world["turns"][i]["trace_id"] for i in indexes}


# Each case: a query string and the indexes (into world["turns"]) it must return, exactly.
FILTER_CASES = [
    ("", (0, 1, 2, 3, 4)),
    ("user={alice_id}", (0, 1, 2)),
    ("user=bob", (3, 4)),
    ("session={session_a}", (0, 1)),
    ("client_request_id=req-b1", (3,)),
    ("tag=team:support", (0, 1, 3)),
    ("tag=team:sales&user=bob", (4,)),
    ("tag=endpoint:api_chat&tag=team:sales", (2, 4)),
    ("environment=staging", (2,)),
    ("app_version=1.4", (0, 1, 3)),
    ("app_version=1.4&environment=production&user=alice", (0, 1)),
    ("feedback=response_is_correct:false", (0, 3)),
    ("feedback=response_is_correct:False&app_version=1.4", (0, 3)),
    ("feedback=response_is_correct:true", (2,)),
    ("feedback=user_rating:4", (4,)),
    ("user=nobody", ()),
    ("user=999999", ()),
]


def test_each_filter_returns_exactly_the_right_traces(staff_api, world):
    for query, expected in FILTER_CASES:
        query = query.format(alice_id=world["alice"].id, session_a=world["turns"][0]["session_id"])
        found = ids(staff_api.get(f"/api/traces/?{query}"))
        assert found == traces_of(world, *expected), query


def test_summaries_carry_context_feedback_and_a_link(staff_api, world):
    (summary,) = staff_api.get("/api/traces/?client_request_id=req-a1").json()["results"]
    assert summary["user"] == str(world["alice"].id)
    assert summary["session"] == world["turns"][0]["session_id"]
    assert summary["request_preview"] == "alice one"
    assert summary["feedback"] == {"response_is_correct": [False]}
    assert summary["expectations"] == {"expected_response": "The right answer"}
    assert summary["tags"]["team"] == "support"
    assert summary["metadata"]["app_version"] == "1.4"
    assert summary["state"] == "OK" and summary["duration_ms"] >= 0
    assert summary["url"].endswith(summary["trace_id"])


def test_since_and_until_bound_the_time(staff_api, world):
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    assert ids(staff_api.get("/api/traces/", {"since": future})) == set()
    assert ids(staff_api.get("/api/traces/", {"since": past})) == traces_of(world, 0, 1, 2, 3, 4)
    assert ids(staff_api.get("/api/traces/", {"until": past})) == set()


def test_cursor_pagination_walks_every_trace_once_in_order(staff_api, world):
    first = staff_api.get("/api/traces/?page_size=2&ordering=time").json()
    seen = [t["trace_id"] for t in first["results"]]
    url = first["next"]
    while url:
        page = staff_api.get(url).json()
        seen += [t["trace_id"] for t in page["results"]]
        url = page["next"]
    assert seen == [t["trace_id"] for t in world["turns"]]


HOSTILE = [
    "x' OR '1'='1",
    "alice'--",
    "a\\'",
    "`mlflow.trace.user`",
    "' OR metadata.`mlflow.trace.user` != '",
    "%",
    "é'",
    "a\nb",
]


def test_hostile_filter_values_are_a_400_or_nothing_never_someone_elses_traces(staff_api, world):
    fields = [
        "user",
        "client_request_id",
        "tag",
        "environment",
        "app_version",
        "feedback",
        "session",
    ]
    for field in fields:
        for value in HOSTILE:
            if field in ("tag", "feedback"):
                value = f"team:{value}" if field == "tag" else f"response_is_correct:{value}"
            response = staff_api.get("/api/traces/", {field: value})
            case = f"{field}={value!r}"
            assert response.status_code in (200, 400), (case, response.content)
            if response.status_code == 200:
                assert response.json()["results"] == [], case
            else:
                assert response.json()["error"] == "invalid", case


def test_hostile_keys_are_a_400(staff_api, world):
    response = staff_api.get("/api/traces/", {"tag": "te`am:support"})
    assert response.status_code == 400


def test_non_staff_get_403_and_anonymous_401(api, world, client):
    assert api.get("/api/traces/").status_code == 403
    assert client.get("/api/traces/").status_code == 401


def test_people_list_the_traces_of_their_own_session_only(world):
    alice = token_client(world["alice"])
    session_a = world["turns"][0]["session_id"]
    assert ids(alice.get(f"/api/sessions/{session_a}/traces/")) == traces_of(world, 0, 1)
    bob = token_client(world["bob"])
    assert bob.get(f"/api/sessions/{session_a}/traces/").status_code == 404


def test_unknown_filters_are_a_400(staff_api, world):
    response = staff_api.get("/api/traces/?usr=alice")
    assert response.status_code == 400
    assert "usr" in response.json()["fields"]


def test_a_cursor_that_is_not_ours_is_a_400_not_an_outage(staff_api, world):
    response = staff_api.get("/api/traces/", {"cursor": "bm90LWEtY3Vyc29y"})
    assert response.status_code == 400, response.content


def test_user_accepts_a_numeric_username_and_ignores_exotic_digits(staff_api, world):
    from tests.factories import UserFactory

    numeric = UserFactory(username="4242")
    assert staff_api.get("/api/traces/", {"user": "4242"}).json()["results"] == []
    assert numeric.id != 4242
    assert staff_api.get("/api/traces/", {"user": "²"}).status_code == 200
