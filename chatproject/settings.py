"""Settings, all read from the environment (see the README's table)."""

import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

# `make run` writes .env (secret key, tracking server, database) so that `manage.py` commands in a
# second terminal reach the same stores as the running app. Variables already set win; an empty
# DJANGO_DOT_ENV reads none (the tests do this).
DOT_ENV = env.str("DJANGO_DOT_ENV", default=str(BASE_DIR / ".env"))
if DOT_ENV and Path(DOT_ENV).is_file():
    environ.Env.read_env(DOT_ENV)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Export one (e.g. `export DJANGO_SECRET_KEY=$(python -c "
            "'import secrets; print(secrets.token_urlsafe(50))')`), or set DJANGO_DEBUG=true "
            "for a local development key. `make run` does this for you."
        )
    SECRET_KEY = "django-insecure-local-development-only"

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "chat.apps.ChatConfig",
    "feedback.apps.FeedbackConfig",
    "privacy.apps.PrivacyConfig",
    "evals.apps.EvalsConfig",
    "quality.apps.QualityConfig",
]

# Every one async-capable: the chat path runs without a thread hop per middleware (a test
# fails on Django's "Asynchronous handler adapted for middleware").
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chatproject.middleware.refuse_nul_in_query",
    "csp.middleware.CSPMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
WSGI_APPLICATION = "chatproject.wsgi.application"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _process_role() -> str:
    argv = sys.argv or [""]
    if len(argv) > 1 and Path(argv[0]).name == "manage.py":
        return f"chat-{argv[1]}"[:63]
    return "chat-web" if "gunicorn" in argv[0] or "uvicorn" in argv[0] else "chat"


DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# No persistent connections (Django's advice for async code): a request's ORM work runs in short
# units (chatproject/asyncdb.py), each giving its connection back when it ends.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout + write transactions that take the lock at BEGIN let hundreds of
    # concurrent turns write without "database is locked"; the backend queues a process's writers
    # on a lock of its own rather than in SQLite's polling busy handler (see its docstring).
    DATABASES["default"]["ENGINE"] = "chatproject.db.sqlite3"
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg's pool per process: a unit borrows a connection and gives it back when it ends.
    # Peak connections = DB_POOL_MAX_SIZE x processes; a unit waits up to DB_POOL_TIMEOUT_S.
    options = DATABASES["default"].setdefault("OPTIONS", {})
    # Who holds a connection, in pg_stat_activity: "chat-web" (the app's workers) or
    # "chat-<command>" (deliver_traces, ...), so the pool's bound can be checked per role.
    options.setdefault("application_name", env.str("DB_APPLICATION_NAME", default=_process_role()))
    options["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
        "timeout": env.float("DB_POOL_TIMEOUT_S", default=10.0),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Async views' short ORM units (chatproject/asyncdb.py) run in the event loop's own thread: no
# thread hop and no GIL hand-off per unit (at 512 JSON users 93-98 turns/s against 55-80 on the
# unit threads, SQLite; docs/serving.md). False: on DB_UNIT_THREADS threads, so a unit waiting for
# the database (a long write of another process, a slow round trip) holds its thread, not the loop.
DB_UNITS_IN_LOOP = env.bool("DB_UNITS_IN_LOOP", default=True)
# With DB_UNITS_IN_LOOP false: threads per process that run async views' ORM units, made once and
# shared by every request; on SQLite each keeps its connection. 0: Django's thread-sensitive mode,
# a thread per request and a connection per unit. On PostgreSQL at most DB_POOL_MAX_SIZE are useful.
DB_UNIT_THREADS = env.int("DB_UNIT_THREADS", default=8)
# Long-lived threads per process for the rest of requests' sync work (request signals, sync views,
# the admin), each request on the least busy; 0: a thread made per request, as Django does.
WEB_REQUEST_THREADS = env.int("WEB_REQUEST_THREADS", default=8)

# Shared by every worker and instance (throttle counts live here): the database the deployment
# already has, by default; CACHE_URL=redis://host:6379/1 for Redis in production.
CACHES = {
    "default": env.cache_url("CACHE_URL", default="dbcache://django_cache"),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat-home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=14 * 24 * 3600)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the page's script sends it back as X-CSRFToken

# --- Behind TLS (production): DJANGO_HTTPS=true; see the README's "Production settings" -----------
HTTPS = env.bool("DJANGO_HTTPS", default=False)
SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]  # probes from inside the network
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=365 * 24 * 3600 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=False)
if env.bool("DJANGO_TRUST_X_FORWARDED_PROTO", default=False):
    # Only behind a proxy that sets this header itself (and strips a client's).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Content-Security-Policy on every response (django-csp): scripts only from our own static files;
# inline style attributes stay allowed (the admin and Swagger UI set some; they run no code).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header makes "no credentials" a 401, not a 403.
        "chatproject.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["chatproject.api.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "chatproject.api.StrictContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "chatproject.schema.ApiSchema",
    "EXCEPTION_HANDLER": "chatproject.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["chatproject.api.ScopedThrottle"],
    # Proxies in front of the app whose X-Forwarded-For to trust; 0: the peer address only, so a
    # client cannot dodge a per-address limit by sending the header itself.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
}

# Requests allowed per user (per IP for sign-in) per period: "30/min", "1000/hour"; "" turns one
# off. Counted in CACHES["default"], so every worker and instance shares them.
THROTTLE_RATES = {
    "chat": env.str("THROTTLE_CHAT", default="30/min"),
    "feedback": env.str("THROTTLE_FEEDBACK", default="60/min"),
    "sign_in": env.str("THROTTLE_SIGN_IN", default="5/min"),  # per username
    "sign_in_ip": env.str("THROTTLE_SIGN_IN_IP", default="20/min"),
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

# Request bodies: larger is a 413, deeper JSON a 400 (both in the API's error shape).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("API_MAX_BODY_BYTES", default=1024 * 1024)
API_MAX_JSON_DEPTH = env.int("API_MAX_JSON_DEPTH", default=20)

SPECTACULAR_SETTINGS = {
    "TITLE": "Traced chat API",
    "DESCRIPTION": "Chat with an LLM-backed assistant; every turn is an MLflow trace.",
    "VERSION": env.str("APP_VERSION", default="0.1.0"),
    "SERVE_INCLUDE_SCHEMA": False,
    # Applies the views' deferred annotations first (chatproject.openapi).
    "DEFAULT_GENERATOR_CLASS": "chatproject.schema.ApiSchemaGenerator",
    # Swagger UI from our own static files (no CDN: works offline, nothing unpinned runs).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"kv": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "kv"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "mlflow": {"level": "WARNING"},
        "alembic": {"level": "WARNING"},
        # The model client logs every HTTP request at INFO; a turn's own log line says more.
        "httpx2": {"level": "WARNING"},
    },
}

# --- Chat -------------------------------------------------------------------------------------
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=8000)
CHAT_HISTORY_TURNS = env.int("CHAT_HISTORY_TURNS", default=10)

# Turns one app process answers at once; past it a turn is a 503 `overloaded` at once (not
# queued). Each waiting turn costs a coroutine and ~tens of KB; see docs/serving.md. Above an
# even share of what the machine carries (~512 JSON turns at once here): a client's keep-alive
# connection stays on the process it reached, and the processes' shares are never even.
CHAT_MAX_TURNS_IN_FLIGHT = env.int("CHAT_MAX_TURNS_IN_FLIGHT", default=340)
CHAT_OVERLOAD_RETRY_AFTER_S = env.int("CHAT_OVERLOAD_RETRY_AFTER_S", default=2)
# A streamed turn counts as this many of CHAT_MAX_TURNS_IN_FLIGHT: its pieces cost the event loop
# ~2x a JSON turn's CPU, and a process with more streams than its CPU carries accepts even its
# refusals late (docs/serving.md). 340 / 4: 85 streams per process.
CHAT_STREAM_TURN_WEIGHT = env.int("CHAT_STREAM_TURN_WEIGHT", default=4)
# Below the cap, a turn is refused too (503 `overloaded`) while the process's event loop runs
# what is due later than this: the machine is past what it carries, whatever the count says
# (a slower machine, a busier neighbour). 0: the cap alone. See docs/serving.md.
CHAT_MAX_LOOP_LAG_MS = env.int("CHAT_MAX_LOOP_LAG_MS", default=250)
# A streamed turn sends an SSE comment when the model has been silent this long (proxies and
# browsers drop idle connections); 0: never.
CHAT_STREAM_KEEPALIVE_S = env.float("CHAT_STREAM_KEEPALIVE_S", default=15.0)

# --- LLM: empty LLM_BASE_URL means the deterministic local responder ------------------------------
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_MODEL = env.str("LLM_MODEL", default="")
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_TIMEOUT_S = env.float("LLM_TIMEOUT_S", default=30.0)
# The local responder's pace per word (0: instant); `make run` sets 15 so streaming is visible.
LLM_LOCAL_TOKEN_DELAY_MS = env.float("LLM_LOCAL_TOKEN_DELAY_MS", default=0.0)
LLM_SYSTEM_PROMPT = env.str(
    "LLM_SYSTEM_PROMPT", default="You are a helpful, concise support assistant."
)

# --- MLflow tracing -------------------------------------------------------------------------------
TRACING_ENABLED = env.bool("TRACING_ENABLED", default=True)
# Mask e-mail addresses, phone numbers and card numbers in every recorded trace (off by default).
TRACE_REDACT_PII = env.bool("TRACE_REDACT_PII", default=False)
# Honour a caller's W3C traceparent (join its trace). Off where the API faces clients whose
# trace ids mean nothing to you: the header can place a turn in a trace, never say who asked.
TRACE_JOIN_CALLERS = env.bool("TRACE_JOIN_CALLERS", default=True)
MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default=f"sqlite:///{VAR_DIR / 'mlflow.db'}")
# Only used when the tracking URI is a local SQLite store: keeps ./mlruns out of the checkout.
MLFLOW_ARTIFACT_ROOT = env.str("MLFLOW_ARTIFACT_ROOT", default=str(VAR_DIR / "mlartifacts"))
MLFLOW_EXPERIMENT_NAME = env.str("MLFLOW_EXPERIMENT_NAME", default="chat-app")
MLFLOW_UI_URL = env.str("MLFLOW_UI_URL", default="http://127.0.0.1:5000")
# Bounds for every MLflow HTTP call made from this process (the seed measured 247 s unbounded).
MLFLOW_HTTP_REQUEST_TIMEOUT = env.int("MLFLOW_HTTP_REQUEST_TIMEOUT", default=5)
MLFLOW_HTTP_REQUEST_MAX_RETRIES = env.int("MLFLOW_HTTP_REQUEST_MAX_RETRIES", default=0)
# MLflow's span batcher waits up to this long before exporting (its default, 5 s, delays feedback).
MLFLOW_TRACE_EXPORT_INTERVAL_MS = env.int("MLFLOW_TRACE_EXPORT_INTERVAL_MS", default=1000)

APP_ENVIRONMENT = env.str("APP_ENVIRONMENT", default="development")
APP_VERSION = env.str("APP_VERSION", default="0.1.0")
DEPLOYMENT_ID = env.str("DEPLOYMENT_ID", default="local")
REGION = env.str("REGION", default="local")
# "team=support,tier=free" -> {"team": "support", "tier": "free"}
TRACE_TAGS = env.dict("TRACE_TAGS", default={})


def _ratio(name: str, value: str) -> float:
    """A sampling ratio from the environment, or a start-up error that says what is wrong."""
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:  # NaN fails this too
        raise ImproperlyConfigured(f"{name}={value!r}: expected a number from 0 to 1 (e.g. 0.1)")
    return ratio


# The share of answered turns whose trace the delivery worker writes to MLflow (docs/tracing.md,
# "Sampling"). Every turn's trace is still stored and counted; a sampled-out one is written later
# if anyone cares (feedback, a label, the review queue, `traces write`).
TRACE_SAMPLE_RATIO = _ratio("TRACE_SAMPLE_RATIO", env.str("TRACE_SAMPLE_RATIO", default="1.0"))
# Per endpoint (the trace's `endpoint` tag), e.g. "api_chat=0.1,seed_chat=1": wins over the above.
TRACE_SAMPLE_RATIO_BY_ENDPOINT = {
    endpoint: _ratio(f"TRACE_SAMPLE_RATIO_BY_ENDPOINT {endpoint}", value)
    for endpoint, value in env.dict("TRACE_SAMPLE_RATIO_BY_ENDPOINT", default={}).items()
}

# --- Feedback delivery to MLflow (the worker: `python manage.py deliver_feedback --loop`) --------
FEEDBACK_RETRY_BASE_S = env.float("FEEDBACK_RETRY_BASE_S", default=1.0)
FEEDBACK_RETRY_MAX_S = env.float("FEEDBACK_RETRY_MAX_S", default=60.0)
FEEDBACK_MAX_ATTEMPTS = env.int("FEEDBACK_MAX_ATTEMPTS", default=80)
# A trace still in the app's export queue is normal for a few seconds: retry it at the base pace.
FEEDBACK_TRACE_WAIT_ATTEMPTS = env.int("FEEDBACK_TRACE_WAIT_ATTEMPTS", default=20)
FEEDBACK_POLL_INTERVAL_S = env.float("FEEDBACK_POLL_INTERVAL_S", default=0.5)
FEEDBACK_DELIVERY_THREADS = env.int("FEEDBACK_DELIVERY_THREADS", default=4)
# While feedback waits out an outage, the worker checks this often whether MLflow is back.
FEEDBACK_PROBE_INTERVAL_S = env.float("FEEDBACK_PROBE_INTERVAL_S", default=5.0)
FEEDBACK_LEASE_S = env.float("FEEDBACK_LEASE_S", default=60.0)
# More work the feedback worker does every FEEDBACK_PROBE_INTERVAL_S (dotted paths to functions
# returning lines to log): finishing erasures in MLflow, so DELETE /api/me/ never calls it.
FEEDBACK_WORKER_CHORES = ["privacy.services.erasures_finish_due", "privacy.retention.retention_due"]


# --- Retention (docs/deploy.md, "Retention"); off unless set -------------------------------------
def _days(name: str) -> int | None:
    value = env.int(name, default=None)
    if value is not None and value < 1:
        raise ImproperlyConfigured(f"{name}={value}: give a number of days >= 1, or leave it unset")
    return value


# Traces older than this many days go: from MLflow (with their assessments and files) and the
# app's trace rows (`chat_traceexport`), so a sampled-out turn can no longer be traced later.
TRACE_RETENTION_DAYS = _days("TRACE_RETENTION_DAYS")
# Conversations whose last turn is older than this many days go, with their turns, messages and
# feedback. Their traces are trace retention's: keep this >= TRACE_RETENTION_DAYS (a check warns).
CONVERSATION_RETENTION_DAYS = _days("CONVERSATION_RETENTION_DAYS")
# The feedback worker starts a retention pass this often, and works through it a batch per chore.
RETENTION_INTERVAL_S = env.float("RETENTION_INTERVAL_S", default=3600.0)
RETENTION_BATCH = env.int("RETENTION_BATCH", default=500)

# --- Quality: rules, webhooks and alerts (run by the feedback worker; docs/quality.md) ----
# The feedback worker keeps a thread matching new votes against rules (and sending webhooks,
# evaluating alerts) every QUALITY_MATCH_INTERVAL_S, beside delivery: a thumbs-down reaches the
# review queue within about a second, however slow MLflow is.
FEEDBACK_WORKER_CHORES += ["quality.services.quality_worker_ensure"]
QUALITY_MATCH_INTERVAL_S = env.float("QUALITY_MATCH_INTERVAL_S", default=0.5)
# Feedback is re-read from this long before the matching cursor (a vote saved before a pass but
# committed after it is still seen).
QUALITY_MATCH_LAG_S = env.float("QUALITY_MATCH_LAG_S", default=2.0)
# "module.function" taking (*, dataset_name, turn, reason) -> bool that adds a turn to a dataset's
# next version (the evals app); empty: a rule's dataset action is skipped with a log line.
QUALITY_DATASET_STAGE = env.str("QUALITY_DATASET_STAGE", default="evals.services.dataset_stage")
QUALITY_ALERT_INTERVAL_S = env.float("QUALITY_ALERT_INTERVAL_S", default=30.0)
QUALITY_WEBHOOK_TIMEOUT_S = env.float("QUALITY_WEBHOOK_TIMEOUT_S", default=5.0)
QUALITY_WEBHOOK_RETRY_BASE_S = env.float("QUALITY_WEBHOOK_RETRY_BASE_S", default=5.0)
QUALITY_WEBHOOK_RETRY_MAX_S = env.float("QUALITY_WEBHOOK_RETRY_MAX_S", default=900.0)
QUALITY_WEBHOOK_MAX_ATTEMPTS = env.int("QUALITY_WEBHOOK_MAX_ATTEMPTS", default=12)

# --- Review queue (admin) -------------------------------------------------------------------------
# How long a turn shown to one reviewer is kept from the others (a new label or skip ends it).
REVIEW_CLAIM_S = env.float("REVIEW_CLAIM_S", default=300.0)
# Where a turn stands from the review queue to a passing evaluation, for the review queue, the
# Turn admin and the report (a dotted path; the `evals` app provides it; empty: not shown).
TURN_LIFECYCLES = env.str("TURN_LIFECYCLES", default="evals.selectors.turn_lifecycles")
# Reviewers who agree (docs/quality.md): the share of queue turns (picked by id) a second
# reviewer labels blind, and every how many turns a reviewer is shown a gold item (0: never).
REVIEW_DOUBLE_SHARE = _ratio("REVIEW_DOUBLE_SHARE", env.str("REVIEW_DOUBLE_SHARE", default="0.1"))
REVIEW_GOLD_EVERY = env.int("REVIEW_GOLD_EVERY", default=10)
# The agreement report marks a reviewer whose Cohen's kappa (with others, with gold) is below this.
REVIEW_LOW_KAPPA = env.float("REVIEW_LOW_KAPPA", default=0.4)

# --- Evaluation dataset the admin action exports corrected turns into -----------------------------
EVAL_DATASET_NAME = env.str("EVAL_DATASET_NAME", default="chat-corrections")
# Versioned datasets and `manage.py evaluate` (docs/quality.md). A record passes when the
# answer matches the correction once normalised, or their token-overlap F1 reaches the threshold.
EVAL_MATCH_THRESHOLD = env.float("EVAL_MATCH_THRESHOLD", default=0.8)
EVAL_CONCURRENCY = env.int("EVAL_CONCURRENCY", default=8)
# The LLM judge runs when a model is configured (LLM_BASE_URL); EVAL_JUDGE=false turns it off.
EVAL_JUDGE = env.bool("EVAL_JUDGE", default=True)

# --- Trace delivery to MLflow (the worker: `python manage.py deliver_traces --loop`) ------------
TRACE_DELIVERY_BATCH = env.int("TRACE_DELIVERY_BATCH", default=200)
TRACE_POLL_INTERVAL_S = env.float("TRACE_POLL_INTERVAL_S", default=0.5)
# Concurrent trace-info writes per batch (the tracking server's workers are the real bound).
TRACE_WRITE_THREADS = env.int("TRACE_WRITE_THREADS", default=8)
TRACE_RETRY_BASE_S = env.float("TRACE_RETRY_BASE_S", default=1.0)
# While the tracking server is down, retries back off to this and never give up.
TRACE_RETRY_MAX_S = env.float("TRACE_RETRY_MAX_S", default=10.0)
# A trace MLflow keeps refusing (not an outage) is marked failed after this many attempts.
TRACE_MAX_ATTEMPTS = env.int("TRACE_MAX_ATTEMPTS", default=20)
# A deliverer's claim on a batch: longer than one write takes; a killed deliverer's rows wait this
# long before another takes them over (writes are idempotent, so an overlap does no harm).
TRACE_LEASE_S = env.float("TRACE_LEASE_S", default=30.0)
# A turn still pending this long after it started lost its worker: the delivery process closes it.
TURN_ABANDONED_AFTER_S = env.float("TURN_ABANDONED_AFTER_S", default=LLM_TIMEOUT_S * 2 + 30)
