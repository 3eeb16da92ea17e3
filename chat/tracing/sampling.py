"""Which answered turns' traces are written to MLflow as they happen (`TRACE_SAMPLE_RATIO`).

The decision is a function of the trace id alone, so it is the same wherever and whenever it is
made again (a replay, an audit, another process): a 64-bit hash of the id against
`ratio * 2**64`. A hash, not the id's own low bits as OpenTelemetry's `TraceIdRatioBased` uses:
our ids come from `uuid4()`, whose low 64 bits start with the fixed variant bits `10` (that rule
would keep nothing below a ratio of 0.5), and a caller's `traceparent` id need not be random.

Nothing is dropped: a sampled-out turn's trace is stored and counted like any other, and written
later if somebody asks for it (`chat.delivery.trace_request`).
"""

from __future__ import annotations

import hashlib

from django.conf import settings

_LIMIT = 2**64


def sample_ratio(*, endpoint: str) -> float:
    """The ratio that applies to a turn of this endpoint (its override, or TRACE_SAMPLE_RATIO)."""
    return settings.TRACE_SAMPLE_RATIO_BY_ENDPOINT.get(endpoint, settings.TRACE_SAMPLE_RATIO)


def trace_sampled(*, trace_id: str, endpoint: str) -> bool:
    """Whether this turn's trace is written to MLflow at once (else it is stored, sampled out)."""
    ratio = sample_ratio(endpoint=endpoint)
    if ratio >= 1.0:
        return True
    digest = hashlib.blake2b(trace_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < round(ratio * _LIMIT)
