"""Async DRF views (adrf), for the views that await a slow service such as the model.

Apart from chatproject.api because DRF's settings import that module: adrf imports DRF's views.
"""

from adrf import views as adrf_views

from chatproject.asyncdb import release_connections


class AsyncAPIView(adrf_views.APIView):
    """An APIView whose handlers are coroutines.

    Authentication, permissions and throttles run first as one short unit of ORM work in the
    request's thread; its connection is given back before the handler awaits anything.
    """

    def initial(self, request, *args, **kwargs):
        try:
            super().initial(request, *args, **kwargs)
        finally:
            release_connections()
