"""What schema fuzzing found, pinned: the schema says what the API does, and the API does it."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def test_every_operation_documents_its_error_answers_in_the_one_error_shape(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "401", "404", "429"} <= codes, (method, path)
            assert "500" not in codes
    assert schema["components"]["schemas"]["ApiError"]["required"] == ["detail", "error"]


def test_strict_inputs_say_unknown_fields_are_refused(schema):
    components = schema["components"]["schemas"]
    assert components["ChatApiInput"]["additionalProperties"] is False
    assert components["MessageFeedbackApiInput"]["oneOf"] == [
        {"required": ["is_correct"]},
        {"required": ["rating"]},
    ]


def test_the_paginated_session_list_and_the_report_are_documented_as_they_answer(schema):
    sessions = schema["paths"]["/api/sessions/"]["get"]["responses"]["200"]
    assert sessions["content"]["application/json"]["schema"]["$ref"].endswith("SessionPage")
    report = schema["paths"]["/api/reports/feedback/"]["get"]["responses"]["200"]
    assert report["content"]["application/json"]["schema"]["$ref"].endswith("Report")


@pytest.mark.parametrize(
    "url", ["/api/sessions/?page_size=-1", "/api/sessions/?page=", "/api/sessions/?x=1"]
)
def test_a_bad_page_parameter_is_a_400_not_silently_ignored(api, url):
    assert api.get(url).status_code == 400


def test_an_empty_filter_value_is_a_400(staff_api):
    response = staff_api.get("/api/reports/feedback/?group_by=day&since=")
    assert response.status_code == 400
    assert "since" in response.json()["fields"]


def test_a_nul_in_the_seed_feedback_query_is_a_json_400(api):
    response = api.post("/chat_feedback?client_request_id=%00", {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"


def test_view_annotations_reach_the_schema_though_applied_only_when_it_is_generated(schema):
    # chat.apis's `extend_schema` (chatproject.openapi) is recorded at import, applied later.
    chat = schema["paths"]["/api/chat/"]["post"]
    headers = {p["name"] for p in chat["parameters"] if p["in"] == "header"}
    assert {"X-Request-ID", "X-Session-ID", "traceparent"} <= headers
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_the_deferred_extend_schema_refuses_what_it_cannot_defer():
    from chatproject.openapi import extend_schema

    with pytest.raises(TypeError, match="view methods only"):

        @extend_schema(responses={204: None})
        class NotAMethod:
            pass
