"""Async DRF views (adrf), for the views that await a slow service such as the model.

Apart from chatproject.api because DRF's settings import that module: adrf imports DRF's views.
"""

from adrf import views as adrf_views
from asgiref.sync import iscoroutinefunction, sync_to_async
from rest_framework.views import APIView

from chatproject.asyncdb import release_connections, run_unit


class AsyncAPIView(adrf_views.APIView):
    """An APIView whose handlers are coroutines.

    Authentication, permissions and throttles run first as one short unit of ORM work (on the
    unit threads, chatproject.asyncdb), together with the handler's own sync part when the view
    has one (`prepare_<method>`, its result in `self.prepared`): under load every unit waits for
    a free unit thread and then for the event loop, so a request's database work before it
    awaits anything is one unit, not two. The unit's connection is given back before the handler
    awaits anything.
    """

    prepared = None

    def initial_unit(self, request, *args, **kwargs):
        """DRF's `initial`, then the handler's `prepare_<method>`: one unit of ORM work."""
        try:
            self.initial(request, *args, **kwargs)
            prepare = getattr(self, f"prepare_{request.method.lower()}", None)
            if prepare is not None and request.method.lower() in self.http_method_names:
                self.prepared = prepare(request, *args, **kwargs)
        finally:
            release_connections()

    def check_throttles(self, request):
        # adrf hands even an empty list of async throttles to `async_to_sync`: a hop back to
        # the event loop, waited for by the unit's thread, on every turn. Ours are sync.
        if any(iscoroutinefunction(t.allow_request) for t in self.get_throttles()):
            return super().check_throttles(request)
        return APIView.check_throttles(self, request)

    async def async_dispatch(self, request, *args, **kwargs):
        # adrf's, with `initial` (and `prepare_<method>`) run as a unit (adrf hands `initial`
        # to the request's own thread).
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await run_unit(self.initial_unit)(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), None)
            if request.method.lower() not in self.http_method_names or handler is None:
                handler = self.http_method_not_allowed
            if iscoroutinefunction(handler):
                response = await handler(request, *args, **kwargs)
            else:
                response = await sync_to_async(handler)(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        if over_asgi(request):
            _render_here(self.response)
        return self.response


def over_asgi(request) -> bool:
    """Whether `request` came through Django's ASGI handler, which then sends the response from
    the same event loop the view ran on (under WSGI, runserver's or the test client's, a view's
    event loop ends with the view and a streamed response is read on another)."""
    return hasattr(getattr(request, "_request", request), "scope")


def _render_here(response) -> None:
    """Render a DRF response in the event loop, where the view ran, not on the request's thread.

    Django's ASGI handler sends a response's `render()` to the request's thread unless it is a
    coroutine function. DRF's renderers (JSON here) are CPU only, ~0.1 ms; the hop was one of a
    turn's slowest steps under load (the request's thread queues every request's sync work).
    Under WSGI (runserver, the test client) Django calls `render()` itself, as usual.
    """
    if not callable(getattr(response, "render", None)):
        return
    response.render()

    async def rendered():
        return response

    response.render = rendered
