"""The signed-in person's own account: DELETE /api/me/ erases it."""

from django.contrib.auth import logout
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chatproject.api import StrictSerializer
from privacy import services
from privacy.models import Erasure


class MeApi(APIView):
    """Erase your account: conversations, turns, feedback, and your traces in MLflow.

    Send `{"confirm": true}`. 204 once the database part is done (your token and session stop
    working at once); the MLflow part runs right after and, if MLflow is unreachable, is finished
    later by the operators' `erase_user --pending`.
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
        services.erasure_finish(erasure=erasure)
        return Response(status=status.HTTP_204_NO_CONTENT)
