"""chatproject.authentication: DRF's token authentication, its query compiled once."""

import pytest
from django.forms.models import model_to_dict
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from chatproject.authentication import TokenAuthentication

pytestmark = pytest.mark.django_db


def test_it_returns_the_user_and_token_drfs_own_returns(user, django_assert_num_queries):
    token = Token.objects.create(user=user)
    ours = TokenAuthentication().authenticate_credentials(token.key)  # compiles its statement
    with django_assert_num_queries(1):
        ours = TokenAuthentication().authenticate_credentials(token.key)
    drfs = authentication.TokenAuthentication().authenticate_credentials(token.key)
    assert model_to_dict(ours[0]) == model_to_dict(drfs[0])
    assert ours[0].date_joined == drfs[0].date_joined and ours[0].date_joined.tzinfo is not None
    assert (ours[1].key, ours[1].user_id, ours[1].user) == (drfs[1].key, drfs[1].user_id, user)
    assert ours[1].created == drfs[1].created  # deferred: read when asked for


def test_a_bad_revoked_or_inactive_users_token_is_refused_with_drfs_message(api, user):
    assert api.get("/api/sessions/").status_code == 200
    key = Token.objects.get(user=user).key

    api.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    refused = api.get("/api/sessions/")
    assert (refused.status_code, refused.json()["detail"]) == (401, "Invalid token.")

    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    user.is_active = False
    user.save()
    refused = api.get("/api/sessions/")
    assert (refused.status_code, refused.json()["detail"]) == (401, "User inactive or deleted.")

    user.is_active = True
    user.save()
    assert api.get("/api/sessions/").status_code == 200
    Token.objects.filter(key=key).delete()  # revoked: refused at once, nothing cached
    assert api.get("/api/sessions/").status_code == 401
    with pytest.raises(exceptions.AuthenticationFailed):
        TokenAuthentication().authenticate_credentials(key)
