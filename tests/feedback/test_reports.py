import pytest

from chat.models import Turn
from feedback import services
from feedback.models import Feedback
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def rows_by_group(response) -> dict:
    assert response.status_code == 200, response.content
    return {row["group"]: row for row in response.json()["results"]}


def test_the_report_by_app_version_matches_hand_computed_numbers(staff_api, world):
    # world: v1.4 = t1 (alice, false + correction), t2 (no feedback), t4 (bob, false)
    #        v1.5 = t3 (alice, true), t5 (bob, rating 4)
    rows = rows_by_group(staff_api.get("/api/reports/feedback/?group_by=app_version"))
    assert rows["1.4"] == {
        "group": "1.4",
        "turns": 3,
        "traced": 3,
        "sampled_out": 0,
        "rated_turns": 2,
        "feedback": 2,
        "feedback_rate": round(2 / 3, 4),
        "judged": 2,
        "positive": 0,
        "positive_rate": 0.0,
        "mean_rating": None,
        "corrections": 1,
        "labelled_turns": 0,
        "labels": 0,
        "labels_judged": 0,
        "labels_positive": 0,
        "label_positive_rate": None,
        "label_corrections": 0,
        "not_in_mlflow": 0,
    }
    assert rows["1.5"]["turns"] == 2
    assert rows["1.5"]["positive_rate"] == 1.0
    assert rows["1.5"]["mean_rating"] == 4.0


def test_the_report_by_user_environment_and_day(staff_api, world):
    by_user = rows_by_group(staff_api.get("/api/reports/feedback/?group_by=user"))
    assert (by_user["alice"]["turns"], by_user["alice"]["positive"]) == (3, 1)
    assert (by_user["bob"]["turns"], by_user["bob"]["mean_rating"]) == (2, 4.0)
    by_env = rows_by_group(staff_api.get("/api/reports/feedback/?group_by=environment"))
    assert (by_env["production"]["turns"], by_env["staging"]["turns"]) == (4, 1)
    by_day = staff_api.get("/api/reports/feedback/?group_by=day").json()["results"]
    assert len(by_day) == 1 and by_day[0]["turns"] == 5 and by_day[0]["feedback"] == 4


def test_the_report_shows_feedback_mlflow_does_not_have_yet(staff_api, world):
    Feedback.objects.filter(turn__app_version="1.5").update(delivery_state="failed")
    rows = rows_by_group(staff_api.get("/api/reports/feedback/?group_by=app_version"))
    assert (rows["1.4"]["not_in_mlflow"], rows["1.5"]["not_in_mlflow"]) == (0, 2)


def test_staff_labels_are_counted_apart_from_the_users_feedback(staff_api, world):
    staff = UserFactory(username="reviewer", is_staff=True)
    t1, t2, t4 = (Turn.objects.get(messages__id=world["turns"][i]["message_id"]) for i in (0, 1, 3))
    services.feedback_submit(user=staff, turn=t1, is_correct=True, expected_response="Better")
    services.feedback_submit(user=staff, turn=t2, is_correct=True)
    services.feedback_submit(user=staff, turn=t4, is_correct=False)
    services.feedback_submit(user=world["alice"], turn=t4, is_correct=True)  # not her turn

    row = rows_by_group(staff_api.get("/api/reports/feedback/?group_by=app_version"))["1.4"]
    # The users' own votes are unchanged: alice's false on t1, bob's false on t4.
    assert (row["rated_turns"], row["feedback"], row["positive"], row["judged"]) == (2, 2, 0, 2)
    assert row["corrections"] == 1
    assert (row["labelled_turns"], row["labels"]) == (3, 4)
    assert (row["labels_positive"], row["labels_judged"], row["label_positive_rate"]) == (
        3,
        4,
        0.75,
    )
    assert row["label_corrections"] == 1
    assert row["not_in_mlflow"] == 4  # the new labels wait for the delivery worker


def test_the_report_is_staff_only_and_validates_group_by(api, staff_api, world):
    assert api.get("/api/reports/feedback/?group_by=user").status_code == 403
    assert staff_api.get("/api/reports/feedback/?group_by=bogus").status_code == 400


def test_the_admin_report_page_shows_the_table_for_staff(admin_client, world, client):
    page = admin_client.get("/admin/reports/feedback/?group_by=app_version")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Feedback quality report" in html and ">1.4</th>" in html and "67% (2)" in html
    assert "<td></td>" not in html.split("<tbody>")[0].split("</tr>")[-2]  # every column headed
    assert ">Users' feedback</th>" in html and ">Staff labels</th>" in html
    assert "style=" not in html.split('id="content"')[1]  # CSP: no inline styles of ours
    assert client.get("/admin/reports/feedback/").status_code == 302  # to the login page
    assert b"Quality report" in admin_client.get("/admin/feedback/feedback/").content


def test_the_admin_index_links_the_report(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/reports/feedback/">Feedback quality report</a>' in html
    assert "Chat sessions" in html  # the apps' own list is still there
