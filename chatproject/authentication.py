"""DRF's token authentication, its one query compiled once (chatproject.db.prepared).

Every API request with a token runs it: DRF's `Token.objects.select_related("user").get(key=...)`
builds and compiles its queryset each time, ~0.6 ms of Python against ~0.1 ms for the read itself
(on a chat turn, in the unit that holds a database connection). Same SQL meaning, same errors,
same `(user, token)`: the token's `created` is left deferred (read on first access).
"""

from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from chatproject.db import prepared


@functools.cache
def _user_by_token() -> prepared.Read:
    user_model = get_user_model()
    return prepared.Read(
        user_model,
        lambda key: user_model._default_manager.filter(auth_token__key=key),
        lambda connection, key: (key,),
    )


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        if self.get_model() is not Token:  # a subclass that swapped the model: DRF's own way
            return super().authenticate_credentials(key)
        users = _user_by_token().instances(key)
        if not users:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = users[0]
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token.from_db(user._state.db, ["key", "user_id"], [key, user.pk])
        token.user = user
        return user, token
