"""Schemathesis over the OpenAPI schema (/api/schema/), signed in with a staff token.

Every operation but DELETE /api/me/ (it would erase the fuzzing user) gets generated requests,
schema-valid and schema-violating, through the WSGI app in-process, and every one of
schemathesis' checks runs on each response: no 5xx, status code, content type, headers and body
as documented, invalid input refused, valid input accepted, and credentials enforced (the token
is schemathesis' own auth, so `ignored_auth` can take it away and expect a 401). Bounded:
SCHEMA_FUZZ_EXAMPLES cases per operation and mode (default 30: about 900 cases, under a minute
on 2 cores); derandomized, no shrinking.
"""

import os
from collections import Counter

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from chatproject.wsgi import application
from tests.conftest import token_client
from tests.factories import UserFactory, answered_turn

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "30"))


@pytest.fixture
def api_schema(mlflow_experiment, staff_token):
    # As Django's test client does: a request's start and end must not close the test's
    # connection (its transaction holds this test's data).
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

        @schema.auth(refresh_interval=None)
        class StaffToken:
            """The token as schemathesis' own auth, so its ignored_auth check can take it away."""

            def get(self, case, ctx):
                return staff_token

            def set(self, case, data, ctx):
                case.headers = {**(case.headers or {}), "Authorization": data}

        yield schema
    finally:
        for signal in (signals.request_started, signals.request_finished):
            signal.connect(close_old_connections)


@pytest.fixture
def staff_token(db):
    staff = UserFactory(is_staff=True, username="fuzzer")
    answered_turn(session__owner=staff)  # something to find, rate and read
    client = token_client(staff)
    return client._credentials["HTTP_AUTHORIZATION"]


@schemathesis.hook
def filter_query(ctx, query) -> bool:
    """A cursor is an opaque token this API gave out: a generated one is rightly a 400
    (tests/test_api_input.py covers those), so fuzzing leaves it out."""
    return not query or "cursor" not in query


@schemathesis.hook
def filter_case(ctx, case) -> bool:
    """X-Session-ID and a body `session_id` that differ are a 400 the schema cannot state
    (tests/chat/test_chat_api.py covers it): fuzz the header or the body field, not both."""
    body = case.body if isinstance(case.body, dict) else {}
    return not (body.get("session_id") and (case.headers or {}).get("X-Session-ID"))


def _fuzz(operation, mode: GenerationMode, token: str, failures: list, run: Counter) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report, do not minimise
    )
    def fuzz(case):
        run["cases"] += 1
        response = case.call()
        if response.status_code >= 500:
            run["server_errors"] += 1
        try:
            case.validate_response(response)
        except (Exception, BaseExceptionGroup) as exc:  # FailureGroup: this case's failed checks
            failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

    try:
        fuzz()
    except Unsatisfiable:
        run["modes_without_cases"] += 1  # e.g. nothing in the operation can be made invalid


def test_every_operation_answers_within_its_schema_and_never_with_a_server_error(
    api_schema, staff_token, capsys
):
    failures: list[str] = []
    run: Counter = Counter()
    operations = [
        result.ok()
        for result in api_schema.get_all_operations()
        if result.ok().label != "DELETE /api/me/"
    ]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, staff_token, failures, run)

    summary = (
        f"schemathesis: {run['cases']} cases over {len(operations)} operations, "
        f"{run['server_errors']} server errors, {len(failures)} failed checks"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert not failures, summary + "\n\n" + "\n\n".join(dict.fromkeys(failures))
    assert run["server_errors"] == 0
