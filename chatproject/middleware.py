"""The project's middleware: requests refused before any view runs, and Django's own
middlewares with hooks that run in the event loop under ASGI (`InlineHooks`)."""

import asyncio
import contextlib
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, sync_to_async
from csp import middleware as csp_middleware
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions
from django.core.cache import close_caches
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers import asgi
from django.core.handlers.base import reset_urlconf
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.decorators import sync_and_async_middleware

from chatproject.asyncdb import request_context, request_thread_used

_THREAD_TIDY_UPS = frozenset((close_old_connections, close_caches, reset_urlconf))


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

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle` (5.2), but for how a response is closed (`_close`).

        Django closes every response on the request's thread (`sync_to_async(response.close)`),
        for its `request_finished` receivers, which tidy that thread's connections. A chat
        turn never runs anything on its request's thread, and under load that last hop was the
        slowest part of the turn after the model (bench/concurrency.py, 512 JSON users on
        PostgreSQL: 270 ms on average, up to 0.9 s, each request queueing for one of
        WEB_REQUEST_THREADS). `request_started`'s hop goes the same way in a served worker
        (`skip_request_started_thread_hop`).
        """
        try:
            body_file = await self.read_body(receive)
        except asgi.RequestAborted:
            return
        asgi.set_script_prefix(asgi.get_script_prefix(scope))
        await asgi.signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self._close(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away meanwhile
                await self.send_response(response, send)
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except asgi.RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await asgi.signals.request_finished.asend(sender=self.__class__)
        else:
            await self._close(response)
        body_file.close()

    async def _close(self, response) -> None:
        """`response.close()`: in the event loop when it only closes the request's files and
        sends `request_finished` to Django's own tidy-ups, and the request ran nothing on its
        thread (so that thread has nothing of this request's to tidy); on the request's thread
        otherwise, as Django does."""
        if (
            all(_closes_a_request(closer) for closer in response._resource_closers)
            and not request_thread_used()
            and _only_thread_tidy_ups(asgi.signals.request_finished, sender=self.__class__)
        ):
            response.close()
        else:
            await sync_to_async(response.close)()


def _closes_a_request(closer) -> bool:
    """Django's `request.close` (every response closes its request: the upload files and the
    body's spooled file)."""
    return isinstance(getattr(closer, "__self__", None), HttpRequest) and closer.__name__ == "close"


def _only_thread_tidy_ups(signal, *, sender) -> bool:
    """Every receiver of `signal` is one of Django's, which tidy the calling thread's own
    connections, caches and URLconf: in the event loop there is nothing of theirs to tidy."""
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return not async_receivers and all(r in _THREAD_TIDY_UPS for r in sync_receivers)


def skip_request_started_thread_hop() -> None:
    """In a served worker: drop Django's `request_started` receivers, which send every request
    to its thread before the view runs (bench/concurrency.py, 512 JSON users on PostgreSQL: 510
    ms on average, up to 1.5 s).

    Both tidy the calling thread's connections (`reset_queries`: DEBUG's query log;
    `close_old_connections`: those past CONN_MAX_AGE), and in a served worker a request's thread
    starts with none: ORM units give theirs back as they end (chatproject.asyncdb), and what a
    request opens on its own thread is closed by `request_finished` when it ends (`_close`).
    """
    request_started.disconnect(reset_queries)
    request_started.disconnect(close_old_connections)
