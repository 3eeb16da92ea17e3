"""ORM work from async code: short sync units, each giving its database connection back.

Django's ORM is synchronous. An async view runs it through `sync_to_async` in the request's own
thread (Django's thread-sensitive mode). Connections there belong to that thread; without care
one stays open for the whole request, model call included. A unit closes what it opened when it
returns: back to the pool on PostgreSQL (`OPTIONS["pool"]`), closed on SQLite. So a turn holds a
connection only while it reads or writes, never while the model thinks (docs/serving.md).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def release_connections() -> None:
    """Give back this thread's connections, except one a caller's transaction still holds.

    (A test's transaction wraps the whole test: its connection must stay.)
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def db_unit(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` as an awaitable unit of ORM work whose connections are given back when it ends."""

    @functools.wraps(func)
    def unit(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return sync_to_async(unit)
