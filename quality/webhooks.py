"""Signed webhook deliveries: queued in the database, sent by the feedback worker, retried.

A rule match or an alert change writes a `WebhookDelivery` row (in the same transaction as the
thing it reports); the worker sends the due ones from a thread of its own, so a slow or dead
receiver never delays matching. Each POST carries:

- `X-Chat-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body with the rule's (or alert's)
  secret, as GitHub signs its webhooks; compare it in constant time;
- `X-Chat-Timestamp`: when this attempt was sent (Unix seconds);
- `X-Chat-Delivery`: the delivery's id, the same on every retry (a receiver can drop repeats).

Anything but a 2xx within QUALITY_WEBHOOK_TIMEOUT_S is a failed attempt, retried after
QUALITY_WEBHOOK_RETRY_BASE_S * 2^(attempt-1) (at most QUALITY_WEBHOOK_RETRY_MAX_S) and given up
(state failed, with the last status and error) after QUALITY_WEBHOOK_MAX_ATTEMPTS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Q
from django.utils import timezone

from quality.models import Alert, Rule, WebhookDelivery

logger = logging.getLogger(__name__)


def signature(*, secret: str, body: bytes) -> str:
    """The X-Chat-Signature value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_enqueue(
    *, url: str, payload: dict, rule: Rule | None = None, alert: Alert | None = None
) -> WebhookDelivery:
    """Queue one POST of `payload` to `url`; the worker sends it (due at once)."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)
    return WebhookDelivery.objects.create(
        rule=rule, alert=alert, url=url, body=body, next_attempt_at=timezone.now()
    )


def _due(now: datetime) -> Q:
    return Q(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now) & (
        Q(leased_until__isnull=True) | Q(leased_until__lte=now)
    )


def webhook_send(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Try one due delivery once; returns its state afterwards, None if it was not due."""
    now = now or timezone.now()
    timeout = settings.QUALITY_WEBHOOK_TIMEOUT_S
    claimed = WebhookDelivery.objects.filter(_due(now), pk=delivery_id).update(
        leased_until=now + timedelta(seconds=timeout + 30), attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("rule", "alert").get(pk=delivery_id)
    body = delivery.body.encode()
    request = urllib.request.Request(  # noqa: S310 (staff-configured http(s) URL)
        delivery.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "chat-quality-webhooks/1",
            "X-Chat-Signature": signature(secret=delivery.secret, body=body),
            "X-Chat-Timestamp": str(int(time.time())),
            "X-Chat-Delivery": str(delivery.pk),
        },
    )
    status, error = None, ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
            response.read(1024)
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:  # refused, timed out, DNS, a malformed URL
        error = f"{type(exc).__name__}: {exc}"
    return _record(delivery, status=status, error=error)


def _record(delivery: WebhookDelivery, *, status: int | None, error: str) -> str:
    now = timezone.now()
    fields = {"leased_until": None, "last_status_code": status, "last_error": error[:2000]}
    if status is not None and 200 <= status < 300:
        fields.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now, next_attempt_at=None)
    elif delivery.attempts >= settings.QUALITY_WEBHOOK_MAX_ATTEMPTS:
        fields.update(state=WebhookDelivery.State.FAILED, next_attempt_at=None)
    else:
        delay = min(
            settings.QUALITY_WEBHOOK_RETRY_BASE_S * 2 ** (delivery.attempts - 1),
            settings.QUALITY_WEBHOOK_RETRY_MAX_S,
        )
        fields.update(next_attempt_at=now + timedelta(seconds=delay))
        fields["last_error"] = fields["last_error"] or f"HTTP {status}"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    state = fields.get("state", WebhookDelivery.State.PENDING)
    if state != WebhookDelivery.State.DELIVERED:
        logger.warning(
            "webhook delivery %s delivery_id=%s attempt=%s status=%s error=%s",
            "failed" if state == WebhookDelivery.State.FAILED else "will retry",
            delivery.pk,
            delivery.attempts,
            status,
            error[:200],
        )
    return state


def webhooks_deliver_due(*, limit: int = 50, deadline_s: float | None = None) -> Counter:
    """Send what is due (oldest first) until `limit` or `deadline_s`; counts by resulting state."""
    started = time.monotonic()
    now = timezone.now()
    ids = list(
        WebhookDelivery.objects.filter(_due(now))
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    counts: Counter = Counter()
    for delivery_id in ids:
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            break
        counts[webhook_send(delivery_id=delivery_id) or "skipped"] += 1
    return counts


def webhook_retry(*, delivery: WebhookDelivery) -> None:
    """Send a failed (or waiting) delivery again now, with a fresh attempt budget."""
    WebhookDelivery.objects.filter(pk=delivery.pk).exclude(
        state=WebhookDelivery.State.DELIVERED
    ).update(state=WebhookDelivery.State.PENDING, attempts=0, next_attempt_at=timezone.now())


# --- The sender thread in the feedback worker ---------------------------------------------------

_sender: threading.Thread | None = None
_sender_lock = threading.Lock()


def webhooks_kick() -> bool:
    """Start sending due deliveries in the background unless a send is already running.

    Returns whether a sender was started. Called on every worker pass: it costs one cheap query
    when nothing is due, and the pass never waits for a receiver.
    """
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.is_alive():
            return False
        if not WebhookDelivery.objects.filter(_due(timezone.now())).exists():
            return False
        _sender = threading.Thread(target=_send_in_thread, name="webhook-sender", daemon=True)
        _sender.start()
        return True


def _send_in_thread() -> None:
    try:
        close_old_connections()
        counts = webhooks_deliver_due(limit=200)
        if counts:
            logger.info("webhooks: %s", dict(counts))
    except Exception:
        logger.exception("webhook sending failed; retried on the next pass")
    finally:
        connection.close()
