"""How the OpenAPI schema is generated (drf-spectacular)."""

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from chatproject.openapi import apply_pending_annotations

# What any operation can answer besides its success, all in the one error shape
# (`chatproject.api.exception_handler`): bad input, credentials, permission, not found, method,
# negotiation, conflict, size, content type, throttling, and the upstream (LLM, tracking store)
# failures. A 500 is deliberately not documented: schema fuzzing must never see one.
ERROR_STATUSES = ("400", "401", "403", "404", "405", "406", "409", "413", "415", "429")
UPSTREAM_STATUSES = ("502", "503", "504")
# A server-sent event as clients parse it: an event name and one JSON document as its data.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["start", "token", "done", "error"]},
        "data": {"type": "string", "description": "one JSON object"},
    },
    "required": ["event", "data"],
}


class ApiError(serializers.Serializer):
    error = serializers.CharField(help_text="a stable code, e.g. invalid, not_found, throttled")
    detail = serializers.CharField(help_text="what went wrong, for people")
    fields = serializers.DictField(required=False, help_text="per-field messages (400 invalid)")


class ApiSchema(AutoSchema):
    """Components named after the view that owns them: each view's nested `InputSerializer`
    becomes `ChatApiInput`, `MessageFeedbackApiInput`, ... instead of one clashing `Input`.
    Every operation documents the error answers it can give, in the API's error shape."""

    def get_serializer_name(self, serializer, direction) -> str:
        return type(serializer).__qualname__.replace(".", "")

    def _map_serializer(self, serializer, direction, bypass_extensions=False):
        from chatproject.api import StrictSerializer

        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False  # unknown fields are a 400
        schema.update(getattr(serializer, "openapi_extra", {}))
        return schema

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if not isinstance(schema, dict):
            return schema
        if schema.get("pattern", "").endswith("\\Z"):
            schema["pattern"] = schema["pattern"][:-2] + "$"  # Python's \Z; ECMA regex has $
        if (
            direction == "request"
            and type(field) is serializers.CharField
            and "pattern" not in schema
        ):
            # DRF refuses NUL characters, and blank text (after trimming) unless allow_blank.
            if field.allow_blank:
                # Non-empty here: drf-spectacular then adds "or empty" as the other half of a
                # oneOf, which "" must match only once.
                schema["pattern"] = "^[^\\x00]+$"
            else:
                schema.setdefault("minLength", 1)
                schema["pattern"] = "^[^\\x00]*[^\\x00\\s][^\\x00]*$"
        return schema

    def _get_request_body(self, direction="request"):
        body = super()._get_request_body(direction)
        if body and getattr(self.get_request_serializer(), "openapi_extra", {}).get("oneOf"):
            body["required"] = True  # one of its fields must be sent, so the body must be
        return body

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in (*ERROR_STATUSES, *UPSTREAM_STATUSES):
            responses.setdefault(code, self._get_response_for_code(ApiError(), code))
        for response in responses.values():
            content = response.get("content", {})
            if "text/event-stream" in content:
                content["text/event-stream"] = {"schema": SSE_EVENT}
        return responses


class ApiSchemaGenerator(SchemaGenerator):
    """drf-spectacular's generator, after applying the views' deferred `extend_schema`
    annotations (chatproject.openapi), so every way of generating the schema (the view, the
    `spectacular` command) sees them."""

    def get_schema(self, request=None, public=False):
        apply_pending_annotations()
        return super().get_schema(request=request, public=public)
