from django.urls import path

from chat.apis import (
    ChatApi,
    SessionDetailApi,
    SessionListApi,
    SessionTracesApi,
    TraceSearchApi,
)

urlpatterns = [
    path("chat/", ChatApi.as_view(), name="chat"),
    path("sessions/", SessionListApi.as_view(), name="session-list"),
    path("sessions/<uuid:session_id>/", SessionDetailApi.as_view(), name="session-detail"),
    path("sessions/<uuid:session_id>/traces/", SessionTracesApi.as_view(), name="session-traces"),
    path("traces/", TraceSearchApi.as_view(), name="trace-search"),
]
