"""The project's middleware: requests refused before any view runs, and Django's own
middlewares with hooks that run in the event loop under ASGI (`InlineHooks`)."""

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, sync_to_async
from csp import middleware as csp_middleware
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers import asgi
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.decorators import sync_and_async_middleware

from chatproject.asyncdb import request_context


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


class InlineHooks:
    """A `MiddlewareMixin` middleware whose hooks run in the event loop, not a thread each.

    Under ASGI, Django runs every `process_request`, `process_view` and `process_response` of
    such a middleware through `sync_to_async`: with the nine middlewares below, ~16 hand-offs to
    a thread and back per request. Under load each one waits for the GIL behind the event loop,
    so a request spent most of its time before the view in them (py-spy, bench/concurrency.py at
    1,000 users: a /health request took 28 s). These hooks do no I/O (headers, cookies, lazy
    objects), so they run inline; a hook that may do I/O says so in `response_needs_thread` and
    keeps its thread. The ASGI application loads these in place of Django's (`ASGI_INLINE`);
    settings.MIDDLEWARE keeps Django's names (its deploy checks look for them), and under WSGI
    (runserver, the test client) Django's own classes run.
    """

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode and hasattr(self, "process_view"):
            sync_process_view = self.process_view

            async def process_view(request, view_func, view_args, view_kwargs):
                return sync_process_view(request, view_func, view_args, view_kwargs)

            self.process_view = process_view  # BaseHandler sees a coroutine: no adapter

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                process_response = sync_to_async(self.process_response, thread_sensitive=True)
                response = await process_response(request, response)
            else:
                response = self.process_response(request, response)
        return response

    def response_needs_thread(self, request, response) -> bool:
        return False


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class CSPMiddleware(InlineHooks, csp_middleware.CSPMiddleware):
    pass


class SessionMiddleware(InlineHooks, sessions.SessionMiddleware):
    """The session is created lazily (no I/O); saving it is I/O, so it keeps its thread."""

    def response_needs_thread(self, request, response) -> bool:
        return request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooks, csrf.CsrfViewMiddleware):
    """Cookies and headers only, as long as the token does not live in the session."""

    def __init__(self, get_response):
        if settings.CSRF_USE_SESSIONS:
            raise ImproperlyConfigured(
                "chatproject.middleware.CsrfViewMiddleware runs in the event loop and cannot "
                "read the session: use django.middleware.csrf.CsrfViewMiddleware with "
                "CSRF_USE_SESSIONS."
            )
        super().__init__(get_response)


class AuthenticationMiddleware(InlineHooks, auth_middleware.AuthenticationMiddleware):
    """`request.user` is lazy: it is read (I/O) by whoever needs it, in their thread."""


class MessageMiddleware(InlineHooks, messages_middleware.MessageMiddleware):
    """Storing messages may write the session: only then does it take a thread."""

    def response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


# Django's middleware -> the same with inline hooks, for the ASGI application (chatproject.asgi).
ASGI_INLINE = {
    f"{base.__module__}.{base.__name__}": f"{__name__}.{inline.__name__}"
    for inline in (
        SecurityMiddleware,
        CSPMiddleware,
        SessionMiddleware,
        CommonMiddleware,
        CsrfViewMiddleware,
        AuthenticationMiddleware,
        MessageMiddleware,
        XFrameOptionsMiddleware,
    )
    for base in (inline.__mro__[2],)
}


class ASGIHandler(asgi.ASGIHandler):
    """Django's ASGI handler with the middleware of settings.MIDDLEWARE, hooks inline, and each
    request's sync work on a long-lived thread (chatproject.asyncdb.request_context)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # Django's refusal
        async with request_context():
            await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        declared = settings.MIDDLEWARE
        settings.MIDDLEWARE = [ASGI_INLINE.get(path, path) for path in declared]
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = declared
