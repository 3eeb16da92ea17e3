"""Requests refused before any view runs."""

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.utils.decorators import sync_and_async_middleware


@sync_and_async_middleware
def refuse_nul_in_query(get_response: Callable):
    """A NUL character in a query parameter is a 400 everywhere.

    PostgreSQL cannot hold NUL in text: an admin list filter such as `?status__exact=%00`
    reached the database and came back as a 500. No parameter of ours ever needs one.
    Sync and async alike, so the async chat view runs without a thread hop here.
    """
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            return _nul_refusal(request) or await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        return _nul_refusal(request) or get_response(request)

    return middleware


def _nul_refusal(request: HttpRequest) -> HttpResponse | None:
    if not any("\x00" in key or "\x00" in value for key, value in _query_items(request)):
        return None
    message = "A query parameter contains a NUL character."
    if request.path.startswith(("/api/", "/chat_feedback")) or request.path == "/chat":
        return JsonResponse({"error": "invalid", "detail": message}, status=400)
    return HttpResponseBadRequest(message, content_type="text/plain")


def _query_items(request: HttpRequest):
    for key, values in request.GET.lists():
        for value in values:
            yield key, value
