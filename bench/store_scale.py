"""Feedback, trace search and the audit at 1k, 100k and 1M traces, as ratios to the 1k figures.

    .venv/bin/python bench/store_scale.py [--sizes 1000,100000,1000000] [--samples 40]

One run, one store that grows: the app's SQLite database and the SQLite tracking store (the
embedded defaults). The first turn and its feedback go through the app (`POST /api/chat/`, the
trace deliverer, `PUT .../feedback/`, the feedback deliverer); their rows, in both databases, are
the template every other trace is cloned from with bulk INSERTs: users, conversations, turns, both
messages, the trace row (`chat_traceexport`, exported) and in MLflow the trace info, tags,
metadata and spans, plus a delivered thumbs on one turn in ten with its assessment. Each clone
has its own ids (trace, span, request, session, user, messages) and times, so the store holds what
the app would have left after that many turns.

Traffic is steady and the store grows with history: the newest `--recent` traces (default 1,000)
are from the last day and every size adds older ones (2 to 367 days old); a user has about
`--per-user` (100) traces at every size, five turns to a conversation. At each size:

- feedback request: `PUT /api/messages/<id>/feedback/` by the turn's owner (token auth, the real
  view): a first vote (201) on a recent turn, then a changed one of the other kind (200);
- feedback -> assessment: after each request, one pass of the feedback worker
  (`services.feedback_deliver_due`, what `deliver_feedback --loop` runs every poll), timed until
  it returns with the row delivered; the assessment is then checked in MLflow (not timed);
- trace search: `GET /api/traces/?user=<id>` and `?client_request_id=<id>` by staff (the admin's
  and `traces search`'s path: `selectors.trace_search` -> `tracing.search_traces`), random users
  and request ids of the whole store, each answer checked (50 traces of that user; exactly one);
- `manage.py audit_traces --since <now - 1 day>`, which must find MLflow matching the database.

p50 and p99 of `--samples` requests per figure (the audit: `--audit-samples` runs), after
unmeasured warm-up requests (ten; the audit: one run). The feedback worker's poll interval
(0.5 s) is left out: it does not depend on the store's size.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from _setup import boot_django, percentile, token_client

DAY_MS = 86_400_000
# Clones take ids below this; the app's own writes during the run, above.
RESERVED_IDS = 1_000_000_000
# Unmeasured requests before each figure: the first size's figures are the first the process
# makes, and would otherwise carry its cold start into every ratio.
WARMUP = 10
# The first turn's own values, replaced in its rows to make each clone's.
QUESTION = "Where is my parcel?"
TEMPLATE_REQUEST_ID = "req-template-0000001"


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes: positive integers, comma-separated")
    return sizes


def dt_text(ms: int) -> str:
    """A time as Django stores it in SQLite (naive UTC, microseconds)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def b64_id(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()


class Template:
    """The first turn's rows in both databases, with its own values made into placeholders."""

    def __init__(self, tmp, trace_id: str) -> None:
        import sqlite3

        from django.db import connection

        from chat.models import Message, TraceExport, Turn
        from feedback.models import Feedback

        self.turn = Turn.objects.get(trace_id=trace_id)
        self.messages = list(Message.objects.filter(turn=self.turn).order_by("id"))
        export = TraceExport.objects.get(trace_id=trace_id)
        self.feedback = Feedback.objects.get(turn=self.turn)
        with connection.cursor() as cursor:
            cursor.execute("SELECT payload FROM chat_traceexport WHERE id = %s", [export.pk])
            payload = json.loads(cursor.fetchone()[0])
        self.payload = self._payload_template(payload)

        db = sqlite3.connect(tmp / "mlflow.db")
        db.row_factory = sqlite3.Row
        self.info = dict(
            db.execute("SELECT * FROM trace_info WHERE request_id = ?", [trace_id]).fetchone()
        )
        self.tags = [
            dict(r) for r in db.execute("SELECT * FROM trace_tags WHERE request_id = ?", [trace_id])
        ]
        self.metadata = [
            dict(r)
            for r in db.execute(
                "SELECT * FROM trace_request_metadata WHERE request_id = ?", [trace_id]
            )
        ]
        spans = [dict(r) for r in db.execute("SELECT * FROM spans WHERE trace_id = ?", [trace_id])]
        self.assessment = dict(
            db.execute(
                "SELECT * FROM assessments WHERE trace_id = ? AND assessment_type = 'feedback'",
                [trace_id],
            ).fetchone()
        )
        db.close()
        self.hex = trace_id[3:]
        self.session = str(self.turn.session_id)
        self.start_ns = payload["start_ns"]
        span_ids = [s["span_id"] for s in payload["spans"]]
        self.span_ids = span_ids
        self.spans = []
        for span in spans:
            content = span["content"].replace("{", "{{").replace("}", "}}")
            content = content.replace(b64_id(int(self.hex, 16), 16), "{trace_b64}")
            content = content.replace(trace_id, "tr-{hex}").replace(self.session, "{session}")
            content = content.replace(TEMPLATE_REQUEST_ID, "{request_id}")
            for k, sid in enumerate(span_ids):
                content = content.replace(b64_id(sid, 8), f"{{s{k}_b64}}")
            starts = {str(s["start_ns"]): s["start_ns"] for s in payload["spans"]}
            ends = {str(s["end_ns"]): s["end_ns"] for s in payload["spans"]}
            for text, ns in {**starts, **ends}.items():
                content = content.replace(text, f"{{t{ns - self.start_ns}}}")
            index = span_ids.index(int(span["span_id"], 16))
            parent = span["parent_span_id"]
            self.spans.append(
                {
                    **span,
                    "content": content,
                    "index": index,
                    "parent_index": span_ids.index(int(parent, 16)) if parent else None,
                    "start_off": span["start_time_unix_nano"] - self.start_ns,
                    "end_off": span["end_time_unix_nano"] - self.start_ns,
                }
            )
        self.offsets = sorted(
            {s["start_ns"] - self.start_ns for s in payload["spans"]}
            | {s["end_ns"] - self.start_ns for s in payload["spans"]}
        )

    def _payload_template(self, payload: dict) -> str:
        """The stored payload as a format string: sentinels in the data, then placeholders."""
        start = payload["start_ns"]
        p = json.loads(json.dumps(payload))
        p["trace_id"] = "@@trace@@"
        p["client_request_id"] = "@@request_id@@"
        p["user"] = "@@user@@"
        p["session"] = "@@session@@"
        p["metadata"]["chat.username"] = "@@username@@"
        p["start_ns"] = "@@t0@@"
        p["end_ns"] = f"@@t{payload['end_ns'] - start}@@"
        p["request_preview"] = {"$message": "@@q@@"}
        p["response_preview"] = {"$message": "@@a@@"}
        ids = [s["span_id"] for s in p["spans"]]
        text = json.dumps(p, separators=(",", ":"), ensure_ascii=False)
        for span in payload["spans"]:
            for key in ("start_ns", "end_ns"):
                text = text.replace(f'"{key}":{span[key]}', f'"{key}":"@@t{span[key] - start}@@"')
        for k, sid in enumerate(ids):
            text = text.replace(f'"span_id":{sid}', f'"span_id":"@@s{k}@@"')
            text = text.replace(f'"parent_id":{sid}', f'"parent_id":"@@s{k}@@"')
        text = text.replace(f'"$message":{self.messages[0].pk}}}', '"$message":"@@q@@"}')
        text = text.replace(f'"$message":{self.messages[1].pk}}}', '"$message":"@@a@@"}')
        text = text.replace(self._session_text(payload), "@@session@@")
        text = text.replace(TEMPLATE_REQUEST_ID, "@@request_id@@")
        text = text.replace("{", "{{").replace("}", "}}")
        # Numbers lose their quotes, strings keep them.
        for name in ["q", "a", *(f"s{k}" for k in range(len(ids))), *self._t_names(payload)]:
            text = text.replace(f'"@@{name}@@"', "{" + name + "}")
        for name in ("trace", "request_id", "user", "session", "username"):
            text = text.replace(f"@@{name}@@", "{" + name + "}")
        assert "@@" not in text, text
        return text

    @staticmethod
    def _session_text(payload: dict) -> str:
        return payload["session"]

    @staticmethod
    def _t_names(payload: dict) -> list[str]:
        start = payload["start_ns"]
        names = {f"t{payload['end_ns'] - start}", "t0"}
        for span in payload["spans"]:
            names |= {f"t{span['start_ns'] - start}", f"t{span['end_ns'] - start}"}
        return sorted(names)


class Builder:
    """Clones the template into both databases in batches, with progress."""

    BATCH = 5000

    def __init__(self, template: Template, *, recent: int, per_user: int, tmp, seed: int) -> None:
        from django.conf import settings
        from django.db import connection

        from chat import tracing

        self.t = template
        self.recent = recent
        self.per_user = per_user
        self.rng = random.Random(seed)
        self.exp_id = int(tracing.experiment_id())
        self.artifact_tag = next(t for t in template.tags if t["key"] == "mlflow.artifactLocation")
        self.built = 0  # clones so far
        self.users: list[int] = []  # every clone's user id, for the searches
        self.per_user_count: dict[int, int] = {}
        self.django = connection
        self.mlflow_path = settings.MLFLOW_TRACKING_URI.removeprefix("sqlite:///")
        with connection.cursor() as cursor:
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM auth_user")
            self.next_user = cursor.fetchone()[0] + 1
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM chat_turn")
            self.turn_base = cursor.fetchone()[0] + 1000
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM chat_message")
            self.message_base = cursor.fetchone()[0] + 2000
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM feedback_feedback")
            self.feedback_base = cursor.fetchone()[0] + 1000
            # Rows the app writes during the measurements take ids above the clones' (SQLite's
            # AUTOINCREMENT continues from the highest id ever used).
            for table in ("chat_turn", "chat_message", "chat_traceexport", "feedback_feedback"):
                cursor.execute(
                    "UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [RESERVED_IDS, table]
                )
        self.now_ms = int(time.time() * 1000)

    def user_count(self, user: int) -> int:
        return self.per_user_count[user]

    def grow_to(self, size: int) -> None:
        import sqlite3

        target = size - 1  # the template turn is one of them
        if target <= self.built:
            return
        stage = target - self.built
        users = max(1, -(-stage // self.per_user))
        first_user = self.next_user
        self.next_user += users
        self._insert_users(first_user, users)
        with self.django.cursor() as cursor:
            cursor.execute("PRAGMA cache_size=-2000000")  # for the build; reset below
        mlflow = sqlite3.connect(self.mlflow_path, timeout=60)
        mlflow.execute("PRAGMA cache_size=-2000000")
        mlflow.execute("PRAGMA synchronous=OFF")  # this connection's, for the build only
        started = time.monotonic()
        done = 0
        while done < stage:
            n = min(self.BATCH, stage - done)
            rows = self._clone_batch(self.built + done, n, done, first_user, users)
            self._write(rows, mlflow)
            done += n
            if done % 50_000 < self.BATCH or done == stage:
                rate = done / (time.monotonic() - started)
                print(
                    f"  {self.built + done + 1:>9,} traces in the store ({rate:,.0f} traces/s)",
                    flush=True,
                )
        mlflow.close()
        self.built += stage
        with self.django.cursor() as cursor:
            cursor.execute("PRAGMA cache_size=-2000")  # SQLite's default, as the app runs
        # No ANALYZE: neither the app nor MLflow runs it, so SQLite plans without statistics.

    def _insert_users(self, first: int, count: int) -> None:
        joined = dt_text(self.now_ms - 400 * DAY_MS)
        rows = [
            (uid, "!", 0, f"u{uid}", "", "", "", 0, 1, joined)
            for uid in range(first, first + count)
        ]
        with self.django.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO auth_user (id, password, is_superuser, username, first_name, "
                "last_name, email, is_staff, is_active, date_joined) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    def _clone_batch(self, base: int, n: int, stage_done: int, first_user: int, users: int) -> dict:
        t = self.t
        rows = {
            k: []
            for k in (
                "session",
                "turn",
                "message",
                "export",
                "feedback",
                "info",
                "tag",
                "meta",
                "span",
                "assessment",
            )
        }
        rng = self.rng
        for j in range(n):
            index = base + j  # 0 .. size-2, the newest first
            k = stage_done + j
            user = first_user + k % users
            nth = k // users  # the user's nth trace in this stage
            self.users.append(user)
            self.per_user_count[user] = self.per_user_count.get(user, 0) + 1
            session_no = nth // 5
            session = uuid.UUID(int=(0x5E55 << 112) | (user << 32) | session_no)
            if index < self.recent - 1:
                start_ms = self.now_ms - 60_000 - int(index * 0.9 * DAY_MS / self.recent)
            else:
                start_ms = self.now_ms - 2 * DAY_MS - int(rng.random() * 365 * DAY_MS)
            start_ns = start_ms * 1_000_000 + rng.randrange(1_000_000)
            trace_hex = uuid.uuid4().hex
            trace_id = f"tr-{trace_hex}"
            turn_id = self.turn_base + index
            q_id = self.message_base + 2 * index
            a_id = q_id + 1
            request_id = f"req-{index:09d}-{trace_hex[:8]}"
            span_ids = [rng.getrandbits(63) or 1 for _ in t.span_ids]
            times = {f"t{off}": start_ns + off for off in t.offsets}
            created = dt_text(start_ms)
            end_ms = (start_ns + t.offsets[-1]) // 1_000_000
            completed = dt_text(end_ms)
            session_text = str(session)
            if nth % 5 == 0:
                rows["session"].append((session.hex, QUESTION, created, completed, user, None))
            rows["turn"].append(
                (
                    turn_id,
                    request_id,
                    trace_id,
                    t.turn.endpoint,
                    "completed",
                    t.turn.model,
                    t.turn.prompt_tokens,
                    t.turn.completion_tokens,
                    t.turn.latency_ms,
                    "",
                    1,
                    created,
                    created,
                    completed,
                    session.hex,
                    user,
                    t.turn.app_version,
                    t.turn.environment,
                    "",
                )
            )
            for m_id, message in ((q_id, t.messages[0]), (a_id, t.messages[1])):
                rows["message"].append(
                    (m_id, message.role, message.content, created, session.hex, turn_id)
                )
            payload = t.payload.format(
                trace=trace_id,
                request_id=request_id,
                user=user,
                session=session_text,
                username=f"u{user}",
                q=q_id,
                a=a_id,
                **{f"s{i}": sid for i, sid in enumerate(span_ids)},
                **times,
            )
            rows["export"].append(
                (
                    turn_id,
                    trace_id,
                    payload,
                    "exported",
                    1,
                    None,
                    None,
                    "",
                    "",
                    created,
                    completed,
                    None,
                    None,
                    "",
                )
            )
            info = t.info
            rows["info"].append(
                (
                    trace_id,
                    self.exp_id,
                    start_ns // 1_000_000,
                    info["execution_time_ms"],
                    info["status"],
                    request_id,
                    info["request_preview"],
                    info["response_preview"],
                    info["db_payload_generation"],
                    info["trace_name"],
                    session_text,
                    info["input_tokens"],
                    info["output_tokens"],
                    info["total_tokens"],
                )
            )
            for tag in t.tags:
                value = tag["value"].replace(t.hex, trace_hex)
                rows["tag"].append((tag["key"], value, trace_id))
            for meta in t.metadata:
                value = meta["value"]
                if meta["key"] == "mlflow.trace.user":
                    value = str(user)
                elif meta["key"] == "chat.username":
                    value = f"u{user}"
                rows["meta"].append((meta["key"], value, trace_id))
            b64 = {f"s{i}_b64": b64_id(sid, 8) for i, sid in enumerate(span_ids)}
            for span in t.spans:
                content = span["content"].format(
                    hex=trace_hex,
                    trace_b64=b64_id(int(trace_hex, 16), 16),
                    session=session_text,
                    request_id=request_id,
                    **b64,
                    **times,
                )
                parent = span["parent_index"]
                rows["span"].append(
                    (
                        trace_id,
                        self.exp_id,
                        f"{span_ids[span['index']]:016x}",
                        f"{span_ids[parent]:016x}" if parent is not None else None,
                        span["name"],
                        span["type"],
                        span["status"],
                        start_ns + span["start_off"],
                        start_ns + span["end_off"],
                        content,
                        span["model_name"],
                    )
                )
            if index % 10 == 3:  # one turn in ten has its user's delivered thumbs
                fb_id = self.feedback_base + index
                is_correct = index % 20 != 3
                assessment_id = f"a-{uuid.uuid4().hex}"
                voted_ms = end_ms + 60_000
                voted = dt_text(voted_ms)
                rows["feedback"].append(
                    (
                        fb_id,
                        is_correct,
                        None,
                        "",
                        "",
                        False,
                        1,
                        voted,
                        voted,
                        "delivered",
                        1,
                        1,
                        "",
                        None,
                        voted,
                        assessment_id,
                        "",
                        turn_id,
                        user,
                        voted,
                        None,
                        "",
                    )
                )
                a = t.assessment
                rows["assessment"].append(
                    (
                        assessment_id,
                        trace_id,
                        a["name"],
                        a["assessment_type"],
                        "true" if is_correct else "false",
                        voted_ms,
                        voted_ms,
                        a["source_type"],
                        str(user),
                        None,
                        1,
                        json.dumps({"chat.feedback_id": str(fb_id)}),
                        self.exp_id,
                        start_ns // 1_000_000,
                        1.0 if is_correct else 0.0,
                        a["is_numeric_value"],
                    )
                )
        return rows

    def _write(self, rows: dict, mlflow) -> None:
        from django.db import transaction

        with transaction.atomic(), self.django.cursor() as c:
            c.executemany(
                "INSERT INTO chat_chatsession (id, title, created_at, updated_at, owner_id, "
                "deleted_at) VALUES (%s, %s, %s, %s, %s, %s)",
                rows["session"],
            )
            c.executemany(
                "INSERT INTO chat_turn (id, client_request_id, trace_id, endpoint, status, model, "
                "prompt_tokens, completion_tokens, latency_ms, error, attempts, started_at, "
                "created_at, completed_at, session_id, user_id, app_version, environment, "
                "partial_response) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows["turn"],
            )
            c.executemany(
                "INSERT INTO chat_message (id, role, content, created_at, session_id, turn_id) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                rows["message"],
            )
            c.executemany(
                "INSERT INTO chat_traceexport (turn_id, trace_id, payload, state, attempts, "
                "next_attempt_at, leased_until, lease_owner, last_error, created_at, exported_at, "
                "repaired_at, requested_at, written_late) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows["export"],
            )
            c.executemany(
                "INSERT INTO feedback_feedback (id, is_correct, rating, comment, "
                "expected_response, withdrawn, version, created_at, updated_at, delivery_state, "
                "delivered_version, "
                "attempts, last_error, next_attempt_at, delivered_at, feedback_assessment_id, "
                "expectation_assessment_id, turn_id, user_id, first_attempt_at, leased_until, "
                "lease_owner) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s)",
                rows["feedback"],
            )
        mlflow.executemany(
            "INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, execution_time_ms, "
            "status, client_request_id, request_preview, response_preview, db_payload_generation, "
            "trace_name, session_id, input_tokens, output_tokens, total_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows["info"],
        )
        mlflow.executemany(
            "INSERT INTO trace_tags (key, value, request_id) VALUES (?, ?, ?)", rows["tag"]
        )
        mlflow.executemany(
            "INSERT INTO trace_request_metadata (key, value, request_id) VALUES (?, ?, ?)",
            rows["meta"],
        )
        mlflow.executemany(
            "INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, "
            "status, start_time_unix_nano, end_time_unix_nano, content, model_name) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows["span"],
        )
        mlflow.executemany(
            "INSERT INTO assessments (assessment_id, trace_id, name, assessment_type, value, "
            "created_timestamp, last_updated_timestamp, source_type, source_id, rationale, valid, "
            "assessment_metadata, experiment_id, trace_timestamp_ms, aggregate_value, "
            "is_numeric_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows["assessment"],
        )
        mlflow.commit()


def first_turn(client, staff_client) -> str:
    """One turn and one vote through the app, delivered by the real workers' passes."""
    from feedback import services
    from tests.conftest import deliver_traces

    body = client.post(
        "/api/chat/", {"message": QUESTION}, format="json", HTTP_X_REQUEST_ID=TEMPLATE_REQUEST_ID
    ).json()
    deliver_traces()
    response = client.put(
        f"/api/messages/{body['message_id']}/feedback/", {"is_correct": True}, format="json"
    )
    assert response.status_code == 201, response.content
    assert services.feedback_deliver_due()["delivered"] == 1
    return body["trace_id"]


def timed(fn, samples: int, warmup: int = WARMUP) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


class Stores:
    """The growing store, and a copy of it at the first size to measure beside it.

    The machine is shared, so figures measured minutes apart differ by more than the store's size
    explains. At every later size each figure is measured in alternating blocks on the grown
    store and on the copy, and its ratio is to the copy's figure from the same minutes.
    """

    def __init__(self, tmp) -> None:
        self.dirs = {"grown": tmp, "first": tmp / "first-size"}
        self.current = "grown"

    def snapshot(self) -> None:
        import shutil

        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.dirs["first"].mkdir()
        for name in ("db.sqlite3", "mlflow.db"):
            shutil.copy(self.dirs["grown"] / name, self.dirs["first"] / name)

    def use(self, which: str) -> None:
        from django.db import connections

        from chat import tracing

        if which == self.current:
            return
        connections["default"].close()
        connections["default"].settings_dict["NAME"] = str(self.dirs[which] / "db.sqlite3")
        assert tracing.configure(
            tracking_uri=f"sqlite:///{self.dirs[which] / 'mlflow.db'}", experiment_name="bench"
        )
        self.current = which


class Measure:
    """Each figure's samples on one store (`Stores.current`), warm-up requests first."""

    def __init__(self, builder: Builder, stores: Stores, staff_client) -> None:
        self.b = builder
        self.stores = stores
        self.staff = staff_client
        self.rng = random.Random(7)
        self.rated: dict[str, set[int]] = {"grown": set(), "first": set()}
        self.clients: dict[tuple[str, int], object] = {}
        self.first_size = 0  # clones in the copy

    def _built(self) -> int:
        return self.first_size if self.stores.current == "first" else self.b.built

    def _client(self, user_id: int):
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient

        key = (self.stores.current, user_id)
        if key not in self.clients:
            user = get_user_model().objects.get(pk=user_id)
            token, _ = Token.objects.get_or_create(user=user)
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
            self.clients[key] = client
        return self.clients[key]

    def feedback(self, samples: int) -> dict[str, list[float]]:
        """First votes and changed votes on recent turns nobody rated: request, then delivery."""
        from chat import tracing
        from feedback import services
        from feedback.models import Feedback

        b = self.b
        rated = self.rated[self.stores.current]
        out = {"put_new": [], "put_changed": [], "deliver_new": [], "deliver_changed": []}
        candidates = [
            i for i in range(min(b.recent - 1, self._built())) if i % 10 != 3 and i not in rated
        ]
        warmup = min(WARMUP, 3)  # per block: every figure of a vote warms the next
        picked = self.rng.sample(candidates, samples + warmup)
        for n, index in enumerate(picked):
            rated.add(index)
            user = b.users[index]
            client = self._client(user)
            message_id = b.message_base + 2 * index + 1
            for kind, body in (
                ("new", {"is_correct": n % 2 == 0, "comment": f"bench {n}"}),
                ("changed", {"rating": 1 + n % 5, "expected_response": "Tomorrow, by noon."}),
            ):
                started = time.perf_counter()
                response = client.put(f"/api/messages/{message_id}/feedback/", body, format="json")
                put_ms = (time.perf_counter() - started) * 1000
                assert response.status_code == (201 if kind == "new" else 200), response.content
                feedback_id = response.json()["id"]
                started = time.perf_counter()
                counts = services.feedback_deliver_due()
                deliver_ms = (time.perf_counter() - started) * 1000
                assert counts.get("delivered") == 1, counts
                row = Feedback.objects.select_related("turn").get(pk=feedback_id)
                assert row.delivery_state == "delivered"
                stored = tracing.assessments_by_trace([row.turn.trace_id])[row.turn.trace_id]
                mine = {a.name: a.value for a in stored if a.key == str(feedback_id)}
                wanted = (
                    {"response_is_correct": body["is_correct"]}
                    if kind == "new"
                    else {
                        "user_rating": body["rating"],
                        "expected_response": body["expected_response"],
                    }
                )
                assert mine == wanted, (mine, wanted)
                if n >= warmup:
                    out[f"put_{kind}"].append(put_ms)
                    out[f"deliver_{kind}"].append(deliver_ms)
        return out

    def search_user(self, samples: int) -> list[float]:
        b = self.b
        users = b.users[: self._built()]

        def one():
            user = self.rng.choice(users)
            response = self.staff.get("/api/traces/", {"user": str(user)})
            assert response.status_code == 200, response.content
            results = response.json()["results"]
            if self.stores.current == "grown":
                assert len(results) == min(50, b.user_count(user)), (user, len(results))
            assert results and all(r["user"] == str(user) for r in results)

        return timed(one, samples, warmup=3)

    def search_request_id(self, samples: int) -> list[float]:
        from chat.models import Turn

        b = self.b

        def one():
            index = self.rng.randrange(self._built())
            turn = Turn.objects.only("client_request_id", "trace_id").get(pk=b.turn_base + index)
            response = self.staff.get("/api/traces/", {"client_request_id": turn.client_request_id})
            assert response.status_code == 200, response.content
            results = response.json()["results"]
            assert [r["trace_id"] for r in results] == [turn.trace_id], results

        return timed(one, samples, warmup=3)

    def audit(self, samples: int) -> list[float]:
        from django.core.management import call_command
        from django.core.management.base import CommandError

        since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        out = []
        for n in range(samples + 1):
            buf = io.StringIO()
            started = time.perf_counter()
            try:
                call_command("audit_traces", since=since, stdout=buf)
            except CommandError as exc:
                raise SystemExit(f"audit_traces found problems:\n{buf.getvalue()}\n{exc}") from exc
            if n:  # the first warms up
                out.append((time.perf_counter() - started) * 1000)
            self.audit_text = buf.getvalue()
        return out

    def all(self, samples: int, audit_samples: int) -> dict[str, list[float]]:
        got = self.feedback(samples)
        got["search_user"] = self.search_user(samples)
        got["search_request_id"] = self.search_request_id(samples)
        got["audit"] = self.audit(audit_samples)
        return got


def interleaved(measure: Measure, samples: int, audit_samples: int, blocks: int) -> dict:
    """{"grown": figures, "first": figures}, measured in `blocks` alternating blocks."""
    got: dict[str, dict[str, list[float]]] = {"grown": {}, "first": {}}
    for block in range(blocks):
        for which in ("first", "grown") if block % 2 == 0 else ("grown", "first"):
            measure.stores.use(which)
            part = measure.all(-(-samples // blocks), max(1, -(-audit_samples // blocks)))
            for key, values in part.items():
                got[which].setdefault(key, []).extend(values)
    measure.stores.use("grown")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[1000, 100_000, 1_000_000])
    parser.add_argument("--samples", type=int, default=40, help="requests per figure")
    parser.add_argument("--audit-samples", type=int, default=8, help="audit runs per size")
    parser.add_argument("--recent", type=int, default=1000, help="traces of the last day")
    parser.add_argument("--per-user", type=int, default=100, help="traces per user")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--blocks", type=int, default=4, help="alternating blocks per figure at larger sizes"
    )
    args = parser.parse_args()
    if args.sizes[0] < args.recent:
        parser.error(f"the smallest size must hold the --recent {args.recent} traces")

    tmp = boot_django()
    print(f"stores in {tmp}", flush=True)
    from django.contrib.auth import get_user_model

    _, client = token_client("bench-template")
    staff, staff_client = token_client("bench-staff")
    get_user_model().objects.filter(pk=staff.pk).update(is_staff=True)
    trace_id = first_turn(client, staff_client)
    template = Template(tmp, trace_id)
    builder = Builder(template, recent=args.recent, per_user=args.per_user, tmp=tmp, seed=args.seed)
    stores = Stores(tmp)
    measure = Measure(builder, stores, staff_client)

    figures: dict[int, dict[str, list[float]]] = {}
    beside: dict[int, dict[str, list[float]]] = {}  # the first size's, measured alongside
    for size in args.sizes:
        print(f"building the store up to {size:,} traces ...", flush=True)
        started = time.monotonic()
        builder.grow_to(size)
        print(f"  built in {time.monotonic() - started:.0f} s; measuring ...", flush=True)
        if size == args.sizes[0]:
            figures[size] = measure.all(args.samples, args.audit_samples)
            stores.snapshot()
            measure.first_size = builder.built
            measure.rated["first"] = set(measure.rated["grown"])
        else:
            both = interleaved(measure, args.samples, args.audit_samples, args.blocks)
            figures[size], beside[size] = both["grown"], both["first"]
        got = figures[size]
        print("  audit: " + " | ".join(measure.audit_text.strip().splitlines()[-3:]), flush=True)
        print(
            "  " + ", ".join(f"{name} p50 {percentile(v, 50):.1f} ms" for name, v in got.items()),
            flush=True,
        )
        if size in beside:
            print(
                f"  beside it, at {args.sizes[0]:,}: "
                + ", ".join(
                    f"{name} p50 {percentile(v, 50):.1f} ms" for name, v in beside[size].items()
                ),
                flush=True,
            )

    rows = [
        ("put_new", "feedback PUT, first vote (201)"),
        ("put_changed", "feedback PUT, changed vote (200)"),
        ("deliver_new", "feedback -> assessment, first"),
        ("deliver_changed", "feedback -> assessment, changed"),
        ("search_user", "search by user (GET /api/traces/)"),
        ("search_request_id", "search by request id"),
        ("audit", "audit_traces --since 1 day"),
    ]
    base = args.sizes[0]
    print()
    head = f"{'ms':36}{f'{base:,} p50':>14}{'p99':>9}"
    head += "".join(f"{f'{s:,} p50':>14}{'p99':>9}{'x':>7}" for s in args.sizes[1:])
    print(head)
    for key, label in rows:
        values = figures[base][key]
        line = f"{label:36}{percentile(values, 50):14.1f}{percentile(values, 99):9.1f}"
        for size in args.sizes[1:]:
            values = figures[size][key]
            p50 = percentile(values, 50)
            ratio = p50 / percentile(beside[size][key], 50)
            line += f"{p50:14.1f}{percentile(values, 99):9.1f}{ratio:6.2f}x"
        print(line)
    n = {k: len(v) for k, v in figures[base].items()}
    print(
        f"\nsamples per figure and size: {n}. x = p50 / p50 of the {base:,}-trace store (a copy"
        f" made at that size) measured in {args.blocks} blocks alternating with the larger one"
    )


if __name__ == "__main__":
    main()
