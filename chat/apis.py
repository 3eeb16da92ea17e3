"""Chat and session endpoints: validate, fetch and authorise, call a service, serialise."""

import re

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors, services, tracing
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


class ChatApi(APIView):
    """POST a message; the answer is one turn of the conversation and one MLflow trace."""

    class InputSerializer(StrictSerializer):
        message = serializers.CharField()
        session_id = serializers.UUIDField(required=False, allow_null=True)

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

        result = services.message_reply_create(
            user=request.user,
            message=serializer.validated_data["message"],
            session_id=session_id,
            client_request_id=client_request_id,
            endpoint=endpoint,
        )

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
