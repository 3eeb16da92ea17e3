"""Chat and session endpoints: validate, fetch and authorise, call a service, serialise."""

import re
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors, services, tracing
from chat.capacity import TurnSlot, slot_for
from chat.models import REQUEST_ID_PATTERN, Message
from chatproject.api import StrictSerializer, WhenField, cursor_decode, cursor_encode
from chatproject.asyncapi import AsyncAPIView, over_asgi
from chatproject.openapi import extend_schema

# The same pattern for JSON Schema (ECMA regex has no \Z).
REQUEST_ID_SCHEMA_PATTERN = REQUEST_ID_PATTERN.pattern.replace("\\Z", "$")

REQUEST_ID_HEADER = OpenApiParameter(
    "X-Request-ID",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    pattern=REQUEST_ID_SCHEMA_PATTERN,
    description="Client request id (1-50 chars of A-Za-z0-9._:-). Sending it again replays the "
    "stored reply. Generated when absent; echoed in the response header.",
)
SESSION_ID_HEADER = OpenApiParameter(
    "X-Session-ID",
    OpenApiTypes.UUID,
    OpenApiParameter.HEADER,
    description="Conversation id; same meaning as `session_id` in the body.",
)
TRACEPARENT_HEADER = OpenApiParameter(
    "traceparent",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="W3C trace context of a calling service (`00-<32 hex>-<16 hex>-<2 hex>`): the "
    "turn's trace joins that trace, under that span. A malformed value is ignored.",
)


def request_id_from(request: Request) -> str | None:
    """Raises: ValidationError for an id MLflow could not store."""
    value = request.headers.get("X-Request-ID")
    if value is None:
        return None
    if not REQUEST_ID_PATTERN.fullmatch(value):
        raise serializers.ValidationError(
            {"X-Request-ID": ["Must be 1-50 characters of letters, digits and . _ : -"]}
        )
    return value


def session_id_from(request: Request, body_session_id):
    """Raises: ValidationError for a malformed header or one that contradicts the body."""
    header = request.headers.get("X-Session-ID")
    if header is None:
        return body_session_id
    try:
        header_id = serializers.UUIDField().to_internal_value(header)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"X-Session-ID": exc.detail}) from exc
    if body_session_id and body_session_id != header_id:
        raise serializers.ValidationError(
            {"X-Session-ID": ["Differs from session_id in the body; send one of them."]}
        )
    return header_id


class EventStreamRenderer(BaseRenderer):
    """Lets `Accept: text/event-stream` through negotiation; errors become one `error` event."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return sse_event("error", data)


def sse_event(kind: str, data) -> bytes:
    """One server-sent event. orjson, not `json.dumps`: a streamed reply is ~120 of these, and the
    standard encoder was a tenth of a streamed turn's CPU (bench/turn_cpu.py --stream).
    Datetimes keep `str()`'s form, as with `json.dumps(default=str)`."""
    data = orjson.dumps(data, default=str, option=_SSE_JSON)
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


_SSE_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def event_stream_response(
    events: AsyncIterator[services.StreamEvent],
    *,
    first: services.StreamEvent | None = None,
    request_id: str,
    serialize_done: Callable[[services.TurnReply], dict],
    slot: TurnSlot,
) -> StreamingHttpResponse:
    """Server-sent events, read from `events` (after `first`, already read) as the ASGI server
    sends them.

    The turn's slot is given back when the stream ends, however it ends (a stream whose client
    left before it started ends with the response).
    """

    def encode(event: services.StreamEvent) -> bytes:
        if event.kind == "keepalive":
            return b": keepalive\n\n"
        data = serialize_done(event.data) if event.kind == "done" else event.data
        return sse_event(event.kind, data)

    async def encoded() -> AsyncIterator[bytes]:
        # Bytes, so Django's response passes each piece on as it is (a str is encoded per piece
        # with the response's charset, looked up in settings every time).
        try:
            # Closing this stream (the client left while a piece was being sent) closes the
            # turn's too, so the turn is recorded as cancelled at once, not when collected.
            async with aclosing(events) as stream:
                if first is not None:
                    yield encode(first)
                async for event in stream:
                    yield encode(event)
        finally:
            slot.release()

    response = StreamingHttpResponse(encoded(), content_type="text/event-stream")
    weakref.finalize(response, slot.release)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must not hold the stream back
    response["X-Request-ID"] = request_id
    return response


class ChatApi(AsyncAPIView):
    """POST a message; the answer is one turn of the conversation and one MLflow trace.

    Async: the model is awaited, so a turn waiting on it holds no thread and no database
    connection. Past CHAT_MAX_TURNS_IN_FLIGHT turns in this process, a turn is refused at once
    (503 `overloaded`, `Retry-After`). See docs/serving.md.
    """

    takes_turn_slot = True  # refused at the door when the process is full (chat.capacity)

    renderer_classes = [JSONRenderer, EventStreamRenderer]
    throttle_scope = "chat"

    class InputSerializer(StrictSerializer):
        message = serializers.CharField()
        session_id = serializers.UUIDField(required=False, allow_null=True)
        stream = serializers.BooleanField(required=False, default=False)

        def validate_message(self, value: str) -> str:
            limit = settings.CHAT_MAX_MESSAGE_CHARS
            if len(value) > limit:
                raise serializers.ValidationError(f"Must be at most {limit} characters.")
            return value

    class OutputSerializer(serializers.Serializer):
        """A `services.TurnReply`, on the JSON and the streamed path alike."""

        response = serializers.CharField(source="reply.content")
        session_id = serializers.UUIDField(source="turn.session_id")
        message_id = serializers.IntegerField(source="reply.id")
        client_request_id = serializers.CharField(source="turn.client_request_id")
        trace_id = serializers.CharField(allow_null=True)
        trace_url = serializers.CharField(allow_null=True)
        model = serializers.CharField(source="turn.model")
        replayed = serializers.BooleanField()

    @classmethod
    def represent(cls, reply: services.TurnReply) -> dict:
        """`reply` as OutputSerializer gives it, through one serializer kept for the process.

        DRF deep-copies a serializer's declared fields for every instance: at 512 users that was
        ~13 % of the event loop's samples (py-spy, its garbage collection included).
        `to_representation` only reads.
        """
        output = cls.__dict__.get("_output")
        if output is None:
            output = cls._output = cls.OutputSerializer()
        return output.to_representation(reply)

    def prepare_post(self, request: Request, endpoint: str = "api_chat") -> "ChatBegun":
        """Validate and claim the turn: sync, in the unit that authenticated the request.

        Raises: ValidationError (400), Overloaded (503, when not served through the ASGI door),
        and what `services.turn_begin` raises (404, 409).
        """
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        client_request_id = request_id_from(request)
        session_id = session_id_from(request, serializer.validated_data.get("session_id"))
        wants_stream = serializer.validated_data["stream"] or "text/event-stream" in (
            request.headers.get("Accept", "")
        )
        slot = slot_for(request, streamed=wants_stream)
        try:
            claim = services.turn_begin(
                user=request.user,
                message=serializer.validated_data["message"],
                session_id=session_id,
                client_request_id=client_request_id,
                endpoint=endpoint,
                caller=(
                    tracing.caller_context(request.headers) if settings.TRACE_JOIN_CALLERS else None
                ),
            )
        except BaseException:
            slot.release()
            raise
        return ChatBegun(claim=claim, streamed=wants_stream, slot=slot)

    @extend_schema(
        request=InputSerializer,
        responses={
            (200, "application/json"): OutputSerializer,
            # start / token / done events (or one error event), each one JSON object; comment
            # lines (`: keepalive`) while the model is slow to answer.
            (200, "text/event-stream"): OpenApiTypes.OBJECT,
        },
        parameters=[REQUEST_ID_HEADER, SESSION_ID_HEADER, TRACEPARENT_HEADER],
    )
    async def post(self, request: Request, endpoint: str = "api_chat") -> Response:
        begun: ChatBegun = self.prepared  # claimed by prepare_post, with the authentication
        claim, slot = begun.claim, begun.slot
        streaming = False  # once the stream is handed over, it gives the slot back
        try:
            request_id = claim.turn.client_request_id
            if begun.streamed:
                events = services.turn_stream(claim)
                # Served, the turn runs to its start event here, its model call started: the
                # model thinks while the response goes out through the middleware
                # (docs/serving.md). Under WSGI the stream is read on an event loop of its own.
                first = await anext(events) if over_asgi(request) else None
                streaming = True
                return event_stream_response(
                    events,
                    first=first,
                    request_id=request_id,
                    serialize_done=self.represent,
                    slot=slot,
                )
            reply = await services.turn_answer(claim)
        finally:
            if not streaming:
                slot.release()
        response = Response(self.represent(reply), status=status.HTTP_200_OK)
        response["X-Request-ID"] = request_id
        return response


@dataclass(frozen=True)
class ChatBegun:
    """A claimed turn, between the unit that claimed it and the handler that awaits the model."""

    claim: services.TurnClaim
    streamed: bool
    slot: TurnSlot


class SessionPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class SessionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class SessionPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = SessionOutputSerializer(many=True)


class MessageOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    role = serializers.ChoiceField(choices=Message.Role.choices)
    content = serializers.CharField()
    created_at = serializers.DateTimeField()
    client_request_id = serializers.CharField(source="turn.client_request_id")
    trace_id = serializers.CharField(source="turn.trace_id")


class SessionTitleSerializer(StrictSerializer):
    title = serializers.CharField(max_length=200, allow_blank=True)


class SessionPageParams(StrictSerializer):
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(
        min_value=1, max_value=SessionPagination.max_page_size, required=False
    )


class SessionListApi(APIView):
    """Your conversations, most recently active first; POST starts an empty one."""

    class InputSerializer(SessionTitleSerializer):
        title = serializers.CharField(max_length=200, allow_blank=True, required=False)

    @extend_schema(
        operation_id="api_sessions_list",
        parameters=[SessionPageParams],
        responses=SessionPageSerializer,
    )
    def get(self, request: Request) -> Response:
        SessionPageParams(data=request.query_params).is_valid(raise_exception=True)
        paginator = SessionPagination()
        page = paginator.paginate_queryset(
            selectors.session_list(user=request.user), request, view=self
        )
        return paginator.get_paginated_response(SessionOutputSerializer(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: SessionOutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        session = services.session_create(
            owner=request.user, title=serializer.validated_data.get("title", "")
        )
        return Response(SessionOutputSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(APIView):
    """One of your conversations with its messages; rename it or delete it."""

    class OutputSerializer(SessionOutputSerializer):
        messages = MessageOutputSerializer(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, session_id) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        messages = selectors.session_messages(session=session)
        fields = ("id", "title", "created_at", "updated_at")
        return Response(
            self.OutputSerializer(
                {**{f: getattr(session, f) for f in fields}, "messages": messages}
            ).data
        )

    @extend_schema(request=SessionTitleSerializer, responses=SessionOutputSerializer)
    def patch(self, request: Request, session_id) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        serializer = SessionTitleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        session = services.session_rename(session=session, title=serializer.validated_data["title"])
        return Response(SessionOutputSerializer(session).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, session_id) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        services.session_delete(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TraceSummarySerializer(serializers.Serializer):
    trace_id = serializers.CharField()
    time = serializers.DateTimeField()
    duration_ms = serializers.IntegerField(allow_null=True)
    state = serializers.CharField()
    user = serializers.CharField(allow_null=True)
    session = serializers.CharField(allow_null=True)
    client_request_id = serializers.CharField(allow_null=True)
    request_preview = serializers.CharField(allow_null=True)
    response_preview = serializers.CharField(allow_null=True)
    feedback = serializers.DictField()
    expectations = serializers.DictField()
    tags = serializers.DictField(child=serializers.CharField())
    metadata = serializers.DictField(child=serializers.CharField())
    url = serializers.CharField(allow_null=True)


class TracePageSerializer(serializers.Serializer):
    results = TraceSummarySerializer(many=True)
    next = serializers.CharField(allow_null=True)


class TracePageParams(StrictSerializer):
    ordering = serializers.ChoiceField(choices=sorted(tracing.ORDERINGS), default="-time")
    cursor = serializers.CharField(required=False, max_length=2000)
    page_size = serializers.IntegerField(min_value=1, max_value=200, default=50)


def _bare(pattern: re.Pattern) -> str:
    return pattern.pattern.removeprefix("^").removesuffix("\\Z")


# `key:value` for the tag and feedback filters, as `_pair` checks it (and says in the schema).
PAIR_PATTERN = rf"^{_bare(tracing.SAFE_KEY)}:{_bare(tracing.SAFE_VALUE)}$"


def _pair(value: str, name: str, sep: str = ":") -> tuple[str, str]:
    key, found, val = value.partition(sep)
    if not found or not tracing.SAFE_KEY.fullmatch(key) or not tracing.SAFE_VALUE.fullmatch(val):
        raise serializers.ValidationError(
            {name: [f"Use {name}=key{sep}value with letters, digits and . _ - in the key."]}
        )
    return key, val


def _query_scope(request: Request) -> str:
    """What a cursor is bound to: this path and every query parameter but the cursor itself."""
    params = sorted((k, v) for k, vs in request.query_params.lists() for v in vs if k != "cursor")
    return f"{request.path}?{params}"


def _cursor(request: Request, cursor: str | None) -> str | None:
    """MLflow's page token inside one of our cursors. Raises: ValidationError."""
    return cursor_decode(cursor, scope=_query_scope(request))


def _trace_page(request: Request, page: tracing.TracePage) -> Response:
    next_url = None
    if page.next_page_token:
        query_params = request.query_params.copy()
        query_params["cursor"] = cursor_encode(page.next_page_token, scope=_query_scope(request))
        next_url = request.build_absolute_uri(f"{request.path}?{query_params.urlencode()}")
    return Response(TracePageSerializer({"results": page.traces, "next": next_url}).data)


def _searched(**filters) -> tracing.TracePage:
    """Raises: ValidationError for a value that cannot be searched or a cursor not ours."""
    try:
        return selectors.trace_search(**filters)
    except tracing.UnsafeFilterValue as exc:
        raise serializers.ValidationError({"filter": [str(exc)]}) from exc


class TraceSearchApi(APIView):
    """Staff: search every trace by user, session, request id, tags, deployment and feedback."""

    permission_classes = [IsAdminUser]

    class FilterSerializer(TracePageParams):
        user = serializers.CharField(required=False, max_length=150, help_text="id or username")
        session = serializers.UUIDField(required=False)
        client_request_id = serializers.RegexField(REQUEST_ID_PATTERN, required=False)
        tag = serializers.ListField(
            child=serializers.RegexField(PAIR_PATTERN), required=False, help_text="key:value"
        )
        environment = serializers.RegexField(tracing.SAFE_VALUE, required=False)
        app_version = serializers.RegexField(tracing.SAFE_VALUE, required=False)
        feedback = serializers.ListField(
            child=serializers.RegexField(PAIR_PATTERN), required=False, help_text="name:value"
        )
        since = WhenField(required=False)
        until = WhenField(required=False)

    @extend_schema(parameters=[FilterSerializer], responses=TracePageSerializer)
    def get(self, request: Request) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        page = _searched(
            user=data.get("user"),
            session_id=data.get("session"),
            client_request_id=data.get("client_request_id"),
            tags=[_pair(v, "tag") for v in data.get("tag", [])],
            environment=data.get("environment"),
            app_version=data.get("app_version"),
            feedback=[_pair(v, "feedback") for v in data.get("feedback", [])],
            since=data.get("since"),
            until=data.get("until"),
            order=data["ordering"],
            cursor=_cursor(request, data.get("cursor")),
            page_size=data["page_size"],
        )
        return _trace_page(request, page)


class SessionTracesApi(APIView):
    """The traces of one of your conversations."""

    @extend_schema(parameters=[TracePageParams], responses=TracePageSerializer)
    def get(self, request: Request, session_id) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        params = TracePageParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        page = _searched(
            user_id=request.user.pk,
            session_id=str(session.pk),
            order=params.validated_data["ordering"],
            cursor=_cursor(request, params.validated_data.get("cursor")),
            page_size=params.validated_data["page_size"],
        )
        return _trace_page(request, page)
