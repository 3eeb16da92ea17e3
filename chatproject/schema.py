"""How the OpenAPI schema is generated (drf-spectacular)."""

from drf_spectacular.openapi import AutoSchema


class ApiSchema(AutoSchema):
    """Components named after the view that owns them: each view's nested `InputSerializer`
    becomes `ChatApiInput`, `MessageFeedbackApiInput`, ... instead of one clashing `Input`."""

    def get_serializer_name(self, serializer, direction) -> str:
        return type(serializer).__qualname__.replace(".", "")
