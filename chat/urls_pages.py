from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from chat.views import chat_page

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat-home"), name="home"),
    path("chat/", chat_page, name="chat-home"),
    path("chat/<uuid:session_id>/", chat_page, name="chat-session"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
