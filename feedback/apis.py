"""Feedback endpoints. They answer once the feedback is in the database; MLflow comes after."""

from drf_spectacular.utils import OpenApiParameter, OpenApiTypes
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors as chat_selectors
from chat.apis import REQUEST_ID_SCHEMA_PATTERN
from chat.models import REQUEST_ID_PATTERN, Turn
from chatproject.api import StrictSerializer, WhenField
from chatproject.openapi import extend_schema
from feedback import selectors, services
from feedback.models import Feedback

COMMENT_CHARS = 5000
EXPECTED_RESPONSE_CHARS = 20000


class FeedbackOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    message_id = serializers.SerializerMethodField()
    client_request_id = serializers.CharField(source="turn.client_request_id")
    trace_id = serializers.CharField(source="turn.trace_id")
    name = serializers.CharField(allow_null=True)
    is_correct = serializers.BooleanField(allow_null=True)
    rating = serializers.IntegerField(allow_null=True)
    comment = serializers.CharField()
    expected_response = serializers.CharField()
    delivery_state = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_message_id(self, feedback: Feedback) -> int | None:
        reply = chat_selectors.turn_reply(turn=feedback.turn)
        return reply.id if reply else None


def _answer(feedback: Feedback, created: bool) -> Response:
    feedback.refresh_from_db()
    code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return Response(FeedbackOutputSerializer(feedback).data, status=code)


class SeedFeedbackApi(APIView):
    """The seed's endpoint: rate your turn by its client request id."""

    throttle_scope = "feedback"

    class InputSerializer(StrictSerializer):
        is_correct = serializers.BooleanField()
        comment = serializers.CharField(
            max_length=COMMENT_CHARS, required=False, allow_blank=True, default=""
        )

    class QuerySerializer(serializers.Serializer):
        client_request_id = serializers.RegexField(REQUEST_ID_PATTERN)

    @extend_schema(
        request=InputSerializer,
        responses={200: FeedbackOutputSerializer, 201: FeedbackOutputSerializer},
        parameters=[
            OpenApiParameter(
                "client_request_id",
                OpenApiTypes.STR,
                required=True,
                pattern=REQUEST_ID_SCHEMA_PATTERN,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        turn = selectors.turn_by_request_id(
            user=request.user, client_request_id=query.validated_data["client_request_id"]
        )
        feedback, created = services.feedback_submit(
            user=request.user,
            turn=turn,
            is_correct=body.validated_data["is_correct"],
            comment=body.validated_data["comment"],
        )
        return _answer(feedback, created)


class MessageFeedbackApi(APIView):
    """Your feedback on one answer: PUT sets or changes it, GET reads it, DELETE withdraws it."""

    throttle_scope = "feedback"

    class InputSerializer(StrictSerializer):
        is_correct = serializers.BooleanField(required=False)
        rating = serializers.IntegerField(min_value=1, max_value=5, required=False)
        comment = serializers.CharField(
            max_length=COMMENT_CHARS, required=False, allow_blank=True, default=""
        )
        expected_response = serializers.CharField(
            max_length=EXPECTED_RESPONSE_CHARS, required=False, allow_blank=True, default=""
        )

        # Exactly one of the two: the schema says so too.
        openapi_extra = {"oneOf": [{"required": ["is_correct"]}, {"required": ["rating"]}]}

        def validate(self, attrs):
            if ("is_correct" in attrs) == ("rating" in attrs):
                raise serializers.ValidationError(
                    "Send exactly one of is_correct (true/false) or rating (1-5)."
                )
            return attrs

    def _turn(self, request: Request, message_id: int) -> Turn:
        return selectors.turn_by_reply_message(user=request.user, message_id=message_id)

    @extend_schema(
        request=InputSerializer,
        responses={200: FeedbackOutputSerializer, 201: FeedbackOutputSerializer},
    )
    def put(self, request: Request, message_id: int) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        turn = self._turn(request, message_id)
        feedback, created = services.feedback_submit(
            user=request.user,
            turn=turn,
            is_correct=body.validated_data.get("is_correct"),
            rating=body.validated_data.get("rating"),
            comment=body.validated_data["comment"],
            expected_response=body.validated_data["expected_response"],
        )
        return _answer(feedback, created)

    @extend_schema(responses=FeedbackOutputSerializer)
    def get(self, request: Request, message_id: int) -> Response:
        feedback = selectors.feedback_get(user=request.user, turn=self._turn(request, message_id))
        return Response(FeedbackOutputSerializer(feedback).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, message_id: int) -> Response:
        feedback = selectors.feedback_get(user=request.user, turn=self._turn(request, message_id))
        services.feedback_withdraw(feedback=feedback)
        return Response(status=status.HTTP_204_NO_CONTENT)


class FeedbackReportApi(APIView):
    """Staff: per group, turns and users' feedback, with staff labels counted apart."""

    permission_classes = [IsAdminUser]

    class QuerySerializer(StrictSerializer):
        group_by = serializers.ChoiceField(choices=sorted(selectors.REPORT_GROUPS))
        since = WhenField(required=False)
        until = WhenField(required=False)

    class RowSerializer(serializers.Serializer):
        group = serializers.CharField()
        turns = serializers.IntegerField()
        traced = serializers.IntegerField(help_text="turns whose trace is (or is being) written")
        sampled_out = serializers.IntegerField(
            help_text="turns whose trace TRACE_SAMPLE_RATIO kept out of MLflow (stored, counted)"
        )
        rated_turns = serializers.IntegerField()
        feedback = serializers.IntegerField()
        feedback_rate = serializers.FloatField()
        judged = serializers.IntegerField()
        positive = serializers.IntegerField()
        positive_rate = serializers.FloatField(allow_null=True)
        mean_rating = serializers.FloatField(allow_null=True)
        corrections = serializers.IntegerField()
        labelled_turns = serializers.IntegerField()
        labels = serializers.IntegerField()
        labels_judged = serializers.IntegerField()
        labels_positive = serializers.IntegerField()
        label_positive_rate = serializers.FloatField(allow_null=True)
        label_corrections = serializers.IntegerField()
        not_in_mlflow = serializers.IntegerField()

    ReportSerializer = type(
        "ReportSerializer",
        (serializers.Serializer,),
        {
            "__qualname__": "FeedbackReportApi.Report",
            "group_by": serializers.CharField(),
            "results": RowSerializer(many=True),
        },
    )

    @extend_schema(parameters=[QuerySerializer], responses=ReportSerializer)
    def get(self, request: Request) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = selectors.feedback_report(**query.validated_data)
        return Response(
            {
                "group_by": query.validated_data["group_by"],
                "results": self.RowSerializer(rows, many=True).data,
            }
        )
