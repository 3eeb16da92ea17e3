from django.urls import path

from feedback.apis import FeedbackReportApi, MessageFeedbackApi, SeedFeedbackApi

urlpatterns = [
    path("chat_feedback", SeedFeedbackApi.as_view(), name="chat-feedback"),
    path(
        "messages/<int:message_id>/feedback/", MessageFeedbackApi.as_view(), name="message-feedback"
    ),
    path("reports/feedback/", FeedbackReportApi.as_view(), name="feedback-report"),
]
