from django.urls import path

from privacy.apis import MeApi

urlpatterns = [
    path("me/", MeApi.as_view(), name="me"),
]
