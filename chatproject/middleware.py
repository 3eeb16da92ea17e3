"""Requests refused before any view runs."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse


def refuse_nul_in_query(get_response: Callable[[HttpRequest], HttpResponse]):
    """A NUL character in a query parameter is a 400 everywhere.

    PostgreSQL cannot hold NUL in text: an admin list filter such as `?status__exact=%00`
    reached the database and came back as a 500. No parameter of ours ever needs one.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or "\x00" in value for key, value in _query_items(request)):
            message = "A query parameter contains a NUL character."
            if request.path.startswith(("/api/", "/chat_feedback")) or request.path == "/chat":
                return JsonResponse({"error": "invalid", "detail": message}, status=400)
            return HttpResponseBadRequest(message, content_type="text/plain")
        return get_response(request)

    return middleware


def _query_items(request: HttpRequest):
    for key, values in request.GET.lists():
        for value in values:
            yield key, value


def drain_unread_body(get_response: Callable[[HttpRequest], HttpResponse]):
    """Read what is left of a request body the view never read, so the connection stays usable.

    A 401/403/404/413 can be answered without reading the body. gunicorn (gthread) then dropped
    the kept-alive connection instead of answering the client's next request on it (1 in 10 at
    20 KB, every time from 70 KB), and it ignores an application's `Connection: close`, so the
    app cannot warn the client instead. Reading the rest costs the server what sending it cost
    the client; gunicorn's worker timeout bounds it.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        # Django says nothing public about whether the body was read; `_read_started` is it.
        if not getattr(request, "_read_started", True):
            while request.read(256 * 1024):
                pass
        return response

    return middleware
