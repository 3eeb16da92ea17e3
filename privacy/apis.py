"""The signed-in person's own account: DELETE /api/me/ erases it."""

import logging

from django.contrib.auth import logout
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chatproject.api import StrictSerializer
from chatproject.openapi import extend_schema
from privacy import services
from privacy.models import Erasure

logger = logging.getLogger(__name__)


class MeApi(APIView):
    """Erase your account: conversations, turns, feedback, and your traces in MLflow.

    Send `{"confirm": true}`. 204 once the database part is done: your token and session stop
    working at once. The MLflow part is the feedback worker's, within seconds (a web worker never
    imports MLflow); while the tracking store is away it waits, recorded as pending.
    """

    class InputSerializer(StrictSerializer):
        confirm = serializers.BooleanField(help_text="Must be true: this cannot be undone.")

        def validate_confirm(self, value: bool) -> bool:
            if value is not True:
                raise serializers.ValidationError("Send true to erase your account.")
            return value

    @extend_schema(request=InputSerializer, responses={204: None})
    def delete(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = request.user
        erasure = services.user_erase(user=user, via=Erasure.Via.SELF, requested_by=user)
        logout(request._request)
        logger.info("erasure requested by its subject erasure_id=%s", erasure.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)
