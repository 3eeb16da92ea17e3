"""What every API of the project shares: strict input and one error shape."""

from collections.abc import Mapping

from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from chatproject.errors import ApplicationError


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses fields it does not know (a typo is not silently dropped)."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        name: ["Unknown field. Known fields: " + ", ".join(self.fields)]
                        for name in unknown
                    }
                )
        return super().to_internal_value(data)


def exception_handler(exc, context):
    """Every API error is JSON: {"error": code, "detail": message[, "fields": {...}]}."""
    if isinstance(exc, ApplicationError):
        return Response({"error": exc.code, "detail": exc.message}, status=exc.status_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = (
            response.data
            if isinstance(response.data, dict)
            else {"non_field_errors": response.data}
        )
        response.data = {"error": "invalid", "detail": "The request is invalid.", "fields": fields}
    elif isinstance(exc, exceptions.APIException):
        response.data = {"error": exc.default_code, "detail": str(exc.detail)}
    elif isinstance(response.data, dict) and "detail" in response.data:
        code = "not_found" if response.status_code == 404 else "error"
        response.data = {"error": code, "detail": str(response.data["detail"])}
    return response
