"""The OpenAPI schema's light half: what API modules and the URLconf import at start-up.

drf-spectacular's `extend_schema` resolves the schema class (`chatproject.schema.ApiSchema`, so
`drf_spectacular.openapi`) when it decorates, and `drf_spectacular.views` imports the whole
generator (and through it `rest_framework.test`, `django.test`, jinja2, unittest). A web worker
that answers chat turns never generates the schema, so here the annotations are recorded at
import and applied by `chatproject.schema.ApiSchemaGenerator` just before a schema is generated,
and the schema and docs views are built on their first request. Saves ~2 MB per web worker
(bench/footprint.py; docs/serving.md, "Memory").

API modules use this module's `extend_schema` exactly as drf-spectacular's (same arguments);
`OpenApiParameter`, `OpenApiTypes` and `extend_schema_field` stay drf-spectacular's own, which
are light (`drf_spectacular.utils`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

_lock = threading.Lock()  # guards _pending
_view_lock = threading.Lock()
_pending: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def extend_schema(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """drf-spectacular's `extend_schema` for a view method, applied when a schema is generated."""

    def record(method: Callable[..., Any]) -> Callable[..., Any]:
        if isinstance(method, type) or hasattr(method, "cls"):
            # drf-spectacular replaces a decorated class's schema or an @api_view's class: only
            # methods are deferred, where it sets attributes on the function it returns.
            raise TypeError("chatproject.openapi.extend_schema decorates view methods only")
        with _lock:
            _pending.append((method, kwargs))
        return method

    return record


def apply_pending_annotations() -> None:
    """Apply every recorded `extend_schema`, in the order the decorators ran (innermost first,
    as stacked decorators do). Idempotent: each is applied once."""
    from drf_spectacular.utils import extend_schema as spectacular_extend_schema

    with _lock:
        pending = list(_pending)
        _pending.clear()
    for method, kwargs in pending:
        spectacular_extend_schema(**kwargs)(method)


def spectacular_view(name: str, **initkwargs: Any) -> Callable[..., HttpResponse]:
    """A view that builds `drf_spectacular.views.<name>.as_view(**initkwargs)` when first called."""
    built: list[Callable[..., HttpResponse]] = []

    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not built:
            with _view_lock:
                if not built:
                    from drf_spectacular import views

                    built.append(getattr(views, name).as_view(**initkwargs))
        return built[0](request, *args, **kwargs)

    view.csrf_exempt = True  # as every DRF view (APIView.as_view); these answer GET only anyway
    view.__name__ = view.__qualname__ = name
    return view
