from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chat.apis import ChatApi
from feedback.apis import SeedFeedbackApi
from feedback.views import feedback_report_page

urlpatterns = [
    path("admin/reports/feedback/", feedback_report_page, name="feedback-report-page"),
    path("admin/", admin.site.urls),
    path("api/", include("chat.urls")),
    path("api/", include("feedback.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # The seed's endpoint, kept for its clients; same handling as /api/chat/.
    path("chat", ChatApi.as_view(), {"endpoint": "seed_chat"}, name="seed-chat"),
    path("chat_feedback", SeedFeedbackApi.as_view(), name="seed-chat-feedback"),
    path("", include("chat.urls_pages")),
]
