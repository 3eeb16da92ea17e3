from django.urls import path

from chat.apis import ChatApi, SessionDetailApi, SessionListApi

urlpatterns = [
    path("chat/", ChatApi.as_view(), name="chat"),
    path("sessions/", SessionListApi.as_view(), name="session-list"),
    path("sessions/<uuid:session_id>/", SessionDetailApi.as_view(), name="session-detail"),
]
