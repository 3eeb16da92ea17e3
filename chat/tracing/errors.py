"""What the tracing package raises to its callers; MLflow's own exceptions never leave it."""


class TraceNotFound(Exception):
    """The trace is not in the tracking store: still in an export queue, or never exported."""


class TrackingUnavailable(Exception):
    """The tracking store could not be reached or refused the call."""


class UnsafeFilterValue(ValueError):
    """A filter value that could not be placed in a filter string safely."""


def short(exc: BaseException) -> str:
    """An exception as one short line for logs and stored errors (never a whole payload)."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"
