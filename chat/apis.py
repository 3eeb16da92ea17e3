"""Chat and session endpoints: validate, fetch and authorise, call a service, serialise."""

import json
import re

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors, services, tracing
from chat.exceptions import TracesUnavailable
from chat.models import Message
from chatproject.api import StrictSerializer

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,50}\Z")

REQUEST_ID_HEADER = OpenApiParameter(
    "X-Request-ID",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Client request id (1-50 chars of A-Za-z0-9._:-). Sending it again replays the "
    "stored reply. Generated when absent; echoed in the response header.",
)
SESSION_ID_HEADER = OpenApiParameter(
    "X-Session-ID",
    OpenApiTypes.UUID,
    OpenApiParameter.HEADER,
    description="Conversation id; same meaning as `session_id` in the body.",
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
        return sse_event("error", data).encode()


def sse_event(kind: str, data) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def event_stream_response(events, *, request_id: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        (sse_event(event.kind, event.data) for event in events),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must not hold the stream back
    response["X-Request-ID"] = request_id
    return response


class ChatApi(APIView):
    """POST a message; the answer is one turn of the conversation and one MLflow trace."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]

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
        response = serializers.CharField()
        session_id = serializers.UUIDField()
        message_id = serializers.IntegerField()
        client_request_id = serializers.CharField()
        trace_id = serializers.CharField(allow_null=True)
        trace_url = serializers.CharField(allow_null=True)
        model = serializers.CharField()
        replayed = serializers.BooleanField()

    @extend_schema(
        request=InputSerializer,
        responses=OutputSerializer,
        parameters=[REQUEST_ID_HEADER, SESSION_ID_HEADER],
    )
    def post(self, request: Request, endpoint: str = "api_chat") -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        client_request_id = request_id_from(request)
        session_id = session_id_from(request, serializer.validated_data.get("session_id"))

        message = serializer.validated_data["message"]
        wants_stream = serializer.validated_data["stream"] or "text/event-stream" in (
            request.headers.get("Accept", "")
        )
        prepared = services.message_reply_begin(
            user=request.user,
            message=message,
            session_id=session_id,
            client_request_id=client_request_id,
            endpoint=endpoint,
        )
        if wants_stream:
            if isinstance(prepared, services.TurnResult):
                events = services.replayed_stream(prepared)
            else:
                events = services.turn_stream(prepared, message=message, endpoint=endpoint)
            turn = prepared.turn if isinstance(prepared, services.TurnResult) else prepared
            return event_stream_response(events, request_id=turn.client_request_id)
        if isinstance(prepared, services.TurnResult):
            result = prepared
        else:
            result = services.message_reply_run(prepared, message=message, endpoint=endpoint)

        turn = result.turn
        trace_id = turn.trace_id or None
        data = self.OutputSerializer(
            {
                "response": result.reply.content,
                "session_id": turn.session_id,
                "message_id": result.reply.id,
                "client_request_id": turn.client_request_id,
                "trace_id": trace_id,
                "trace_url": tracing.trace_ui_url(trace_id),
                "model": turn.model,
                "replayed": result.replayed,
            }
        ).data
        response = Response(data, status=status.HTTP_200_OK)
        response["X-Request-ID"] = turn.client_request_id
        return response


class SessionPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class SessionOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MessageOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    role = serializers.ChoiceField(choices=Message.Role.choices)
    content = serializers.CharField()
    created_at = serializers.DateTimeField()
    client_request_id = serializers.CharField(source="turn.client_request_id")
    trace_id = serializers.CharField(source="turn.trace_id")


class SessionTitleSerializer(StrictSerializer):
    title = serializers.CharField(max_length=200, allow_blank=True)


class SessionListApi(APIView):
    """Your conversations, most recently active first; POST starts an empty one."""

    class InputSerializer(SessionTitleSerializer):
        title = serializers.CharField(max_length=200, allow_blank=True, required=False)

    @extend_schema(responses=SessionOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
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


def _pair(value: str, name: str) -> tuple[str, str]:
    key, sep, val = value.partition(":")
    if not sep or not tracing.SAFE_KEY.fullmatch(key) or not tracing.SAFE_VALUE.fullmatch(val):
        raise serializers.ValidationError(
            {name: [f"Use {name}=key:value with letters, digits and . _ - in the key."]}
        )
    return key, val


def _safe(value: str, name: str) -> str:
    if not tracing.SAFE_VALUE.fullmatch(value):
        raise serializers.ValidationError({name: ["Contains characters that cannot be searched."]})
    return value


def _trace_page(request: Request, query: tracing.TraceQuery, params: dict) -> Response:
    try:
        page = tracing.search_traces(
            query,
            order=params["ordering"],
            page_token=params.get("cursor"),
            page_size=params["page_size"],
        )
    except tracing.UnsafeFilterValue as exc:
        raise serializers.ValidationError({"filter": [str(exc)]}) from exc
    except tracing.TrackingUnavailable as exc:
        raise TracesUnavailable(
            "Trace search needs the MLflow tracking server, which did not answer; retry shortly."
        ) from exc
    next_url = None
    if page.next_page_token:
        query_params = request.query_params.copy()
        query_params["cursor"] = page.next_page_token
        next_url = request.build_absolute_uri(f"{request.path}?{query_params.urlencode()}")
    return Response(TracePageSerializer({"results": page.traces, "next": next_url}).data)


class TraceSearchApi(APIView):
    """Staff: search every trace by user, session, request id, tags, deployment and feedback."""

    permission_classes = [IsAdminUser]

    class FilterSerializer(TracePageParams):
        user = serializers.CharField(required=False, max_length=150, help_text="id or username")
        session = serializers.UUIDField(required=False)
        client_request_id = serializers.RegexField(REQUEST_ID_PATTERN, required=False)
        tag = serializers.ListField(child=serializers.CharField(), required=False)
        environment = serializers.CharField(required=False, max_length=250)
        app_version = serializers.CharField(required=False, max_length=250)
        feedback = serializers.ListField(
            child=serializers.CharField(), required=False, help_text="name:value"
        )
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)

    @extend_schema(parameters=[FilterSerializer], responses=TracePageSerializer)
    def get(self, request: Request) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = trace_query_from(params.validated_data)
        if query is None:
            return Response(TracePageSerializer({"results": [], "next": None}).data)
        return _trace_page(request, query, params.validated_data)


def trace_query_from(data: dict) -> tracing.TraceQuery | None:
    """A TraceQuery from validated filters; None when the user filter names nobody.

    Raises: ValidationError for a tag/feedback/deployment value that cannot be searched.
    """
    user_id = None
    if "user" in data:
        user_id = selectors.user_id_for(data["user"])
        if user_id is None:
            return None
    metadata = [(k, _safe(data[k], k)) for k in ("environment", "app_version") if k in data]
    feedback = [_pair(v, "feedback") for v in data.get("feedback", [])]
    return tracing.TraceQuery(
        user_id=user_id,
        session_id=str(data["session"]) if "session" in data else None,
        client_request_id=data.get("client_request_id"),
        tags=tuple(_pair(v, "tag") for v in data.get("tag", [])),
        metadata=tuple(metadata),
        # MLflow stores booleans as 'true'/'false'.
        feedback=tuple(
            (k, v.lower() if v.lower() in ("true", "false") else v) for k, v in feedback
        ),
        since_ms=int(data["since"].timestamp() * 1000) if "since" in data else None,
        until_ms=int(data["until"].timestamp() * 1000) if "until" in data else None,
    )


class SessionTracesApi(APIView):
    """The traces of one of your conversations."""

    @extend_schema(parameters=[TracePageParams], responses=TracePageSerializer)
    def get(self, request: Request, session_id) -> Response:
        session = selectors.session_get(user=request.user, session_id=session_id)
        params = TracePageParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = tracing.TraceQuery(user_id=request.user.pk, session_id=str(session.pk))
        return _trace_page(request, query, params.validated_data)
