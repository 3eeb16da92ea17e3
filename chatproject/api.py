"""What every API of the project shares: strict, bounded input and one error shape."""

import hashlib
from collections.abc import Mapping

from django.conf import settings
from django.core import signing
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, QueryDict
from django.views import defaults
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from chatproject.errors import ApplicationError

# The JSON type each kind of field accepts from a request body, most specific class first.
# DRF coerces (123 -> "123", "yes" -> True, "5" -> 5); an API client's typo should be a 400.
_JSON_TYPES: list[tuple[type, tuple[type, ...], str]] = [
    (serializers.BooleanField, (bool,), "true or false"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.ListField, (list,), "a list"),
    (serializers.DictField, (dict,), "an object"),
    (serializers.CharField, (str,), "a string"),
    (serializers.UUIDField, (str,), "a string"),
    (serializers.DateTimeField, (str,), "a string"),
    (serializers.ChoiceField, (str,), "a string"),
]


def _json_type_error(field: serializers.Field, value) -> str | None:
    if value is None:
        return None  # allow_null decides
    for field_class, accepted, described in _JSON_TYPES:
        if isinstance(field, field_class):
            ok = isinstance(value, accepted) and not (
                isinstance(value, bool) and bool not in accepted
            )
            return None if ok else f"Must be {described}, not {type(value).__name__}."
    return None


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses unknown fields and, in JSON bodies, values of the wrong
    JSON type (query strings are text by nature, so their fields still parse "5" as 5)."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            errors = {
                name: ["Unknown field. Known fields: " + ", ".join(self.fields)]
                for name in sorted(set(data) - set(self.fields))
            }
            if not isinstance(data, QueryDict):
                for name, field in self.fields.items():
                    problem = name in data and _json_type_error(field, data[name])
                    if problem:
                        errors[name] = [problem]
            else:
                # DRF reads `?name=` as "not given"; a client that sent it meant something.
                for name, field in self.fields.items():
                    if data.get(name) == "" and not getattr(field, "allow_blank", False):
                        errors[name] = ["May not be empty: give a value or leave it out."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "type": "string",
        "anyOf": [{"format": "date"}, {"format": "date-time"}],
        "description": "ISO 8601 date or date and time, e.g. 2026-11-01 or 2026-11-01T09:30:00Z",
    }
)
class WhenField(serializers.DateTimeField):
    """A point in time from a query string: a date (its midnight) or a date and time.

    Documented as a date or a date-time (JSON Schema's `date-time` alone is RFC 3339 only)."""


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"

    def __init__(self):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"The request body is larger than {limit} bytes; send less.")


def _depth(value, limit: int) -> bool:
    """Whether `value` nests containers deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class BoundedJSONParser(JSONParser):
    """JSON bodies of bounded size (DATA_UPLOAD_MAX_MEMORY_SIZE) and nesting (API_MAX_JSON_DEPTH).

    Python's decoder recurses per bracket: 100k of them is a RecursionError, which must be the
    client's 400, not our 500.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise self._too_deep() from exc
        if _depth(data, settings.API_MAX_JSON_DEPTH):
            raise self._too_deep()
        return data

    @staticmethod
    def _too_deep() -> exceptions.ParseError:
        return exceptions.ParseError(
            f"JSON nested deeper than {settings.API_MAX_JSON_DEPTH} levels; flatten the body."
        )


# --- Throttling: DRF's throttles, rates from settings.THROTTLE_RATES when each request comes ------


class StrictContentNegotiation(DefaultContentNegotiation):
    """`?format=` names a renderer or is a 404, as DRF answers an unknown one; DRF alone takes
    an empty `?format=` as no format at all, which the schema's enum does not allow."""

    def select_renderer(self, request, renderers, format_suffix=None):
        param = self.settings.URL_FORMAT_OVERRIDE
        given = request.query_params.get(param) if param and not format_suffix else None
        if given == "":
            raise exceptions.NotFound(f"?{param}= names no format; leave it out or give one")
        return super().select_renderer(request, renderers, format_suffix)


class ScopedThrottle(ScopedRateThrottle):
    """Per user (per IP when signed out) for the view's `throttle_scope`."""

    def get_rate(self) -> str | None:
        return settings.THROTTLE_RATES.get(self.scope) or None


class KeyedThrottle(SimpleRateThrottle):
    """A named count, for views outside DRF: per `key` (a username), or per client address."""

    def __init__(self, scope: str, key: str | None = None):
        self.scope = scope
        self.key = hashlib.sha256(key.encode()).hexdigest()[:32] if key is not None else None
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)

    def get_rate(self) -> str | None:
        return settings.THROTTLE_RATES.get(self.scope) or None

    def get_cache_key(self, request, view) -> str:
        ident = self.key if self.key is not None else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


# --- Cursors: MLflow's page tokens, signed, so a client can only send back one we gave out -------

_CURSOR_SALT = "chatproject.api.cursor"


def cursor_encode(page_token: str, *, scope: str) -> str:
    """An opaque cursor for `page_token`, valid only for the query `scope` names."""
    return signing.dumps({"t": page_token, "s": _scope_hash(scope)}, salt=_CURSOR_SALT)


def cursor_decode(cursor: str | None, *, scope: str) -> str | None:
    """Raises: ValidationError for a cursor this API did not give out for this query."""
    if cursor is None:
        return None
    try:
        data = signing.loads(cursor, salt=_CURSOR_SALT)
    except signing.BadSignature:
        data = None
    if not isinstance(data, dict) or data.get("s") != _scope_hash(scope):
        raise serializers.ValidationError(
            {"cursor": ["Not a cursor this API gave out for this query; start without it."]}
        )
    return data["t"]


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


# --- One error shape ------------------------------------------------------------------------------


def exception_handler(exc, context):
    """Every API error is JSON: {"error": code, "detail": message[, "fields": {...}]}."""
    if isinstance(exc, ApplicationError):
        return Response(
            {"error": exc.code, "detail": exc.message},
            status=exc.status_code,
            headers=exc.headers(),
        )
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        exc = exceptions.Throttled(wait=exc.wait, detail="Too many requests; slow down.")
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


# --- Django's own error views, JSON under /api/ (errors raised before or outside DRF) ----------


def _is_api(request) -> bool:
    return request.path.startswith(("/api/", "/chat_feedback")) or request.path == "/chat"


def _json_error(status_code: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status_code)


def bad_request(request, exception, template_name="400.html"):
    if _is_api(request):
        if isinstance(exception, RequestDataTooBig):
            return _json_error(413, "too_large", RequestTooLarge().detail)
        return _json_error(400, "bad_request", "The request could not be read.")
    return defaults.bad_request(request, exception, template_name)


def permission_denied(request, exception, template_name="403.html"):
    if _is_api(request):
        return _json_error(403, "permission_denied", "You may not do this.")
    return defaults.permission_denied(request, exception, template_name)


def page_not_found(request, exception, template_name="404.html"):
    if _is_api(request):
        return _json_error(404, "not_found", f"No API endpoint at {request.path}; see /api/docs/.")
    return defaults.page_not_found(request, exception, template_name)


def server_error(request, template_name="500.html"):
    if _is_api(request):
        return _json_error(500, "server_error", "Something went wrong on our side; try again.")
    return defaults.server_error(request, template_name)
