from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from chat.apis import ChatApi
from chatproject.openapi import spectacular_view
from chatproject.ops import health, metrics
from chatproject.pages import SignInView, SignOutView, chat_page
from feedback.apis import SeedFeedbackApi
from feedback.views import feedback_report_page

handler400 = "chatproject.api.bad_request"
handler403 = "chatproject.api.permission_denied"
handler404 = "chatproject.api.page_not_found"
handler500 = "chatproject.api.server_error"

urlpatterns = [
    path("admin/reports/feedback/", feedback_report_page, name="feedback-report-page"),
    # One sign-in page for everyone, so the admin's is throttled too.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    path("admin/", admin.site.urls),
    path("api/", include("chat.urls")),
    path("api/", include("feedback.urls")),
    path("api/", include("privacy.urls")),
    path("api/schema/", spectacular_view("SpectacularAPIView"), name="schema"),
    path(
        "api/docs/",
        spectacular_view("SpectacularSwaggerSplitView", url_name="schema"),
        name="api-docs",
    ),
    # The seed's endpoint, kept for its clients; same handling as /api/chat/.
    path("chat", ChatApi.as_view(), {"endpoint": "seed_chat"}, name="seed-chat"),
    path("chat_feedback", SeedFeedbackApi.as_view(), name="seed-chat-feedback"),
    path("health/", health, name="health"),
    path("metrics", metrics, name="metrics"),
    # The web page.
    path("", RedirectView.as_view(pattern_name="chat-home"), name="home"),
    path("chat/", chat_page, name="chat-home"),
    path("chat/<uuid:session_id>/", chat_page, name="chat-session"),
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", SignOutView.as_view(), name="logout"),
]
