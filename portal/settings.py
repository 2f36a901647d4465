"""Tollgate settings: everything comes from the environment, with an embedded default.

Nothing set: SQLite in ``var/``, the SQL ledger backend, and a Celery broker on kombu's
filesystem transport, so ``make run`` needs nothing but Python. ``DATABASE_URL``,
``REDIS_URL`` and ``TIGERBEETLE_ADDRESSES`` switch to the real services (see README).
"""

from __future__ import annotations

import decimal
import os
import secrets
from pathlib import Path

import dj_database_url

# Money and quantities are exact Decimals (docs/pricing.md). 80 significant digits keep every product,
# sum and difference exact (10^12 tokens x a 10-decimal price x a markup); set before any thread starts,
# so that every thread's context inherits it.
decimal.DefaultContext.prec = 80
decimal.getcontext().prec = 80

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Where the embedded default keeps its state (SQLite file, broker folders, secret key).
DATA_DIR = Path(os.environ.get("TOLLGATE_DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    configured = os.environ.get("SECRET_KEY") or os.environ.get("DJANGO_SECRET_KEY")
    if configured:
        return configured
    # Embedded default: one random key per data folder, kept so sessions survive restarts.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "portal.health.csrf_failure"  # the error page (JSON under /api/), not Django's own
# --- HTTPS and the browser (docs/deploy.md "Production settings"; `check --deploy` is clean with them) ---------
# Behind a proxy that terminates TLS and sets X-Forwarded-Proto itself: requests it marks https are secure to
# Django, and a plain-HTTP request is redirected to HTTPS (the health probes, asked from inside, are not). Off
# by default, since trusting the header without such a proxy would let any client claim https.
BEHIND_TLS_PROXY = env_bool("TOLLGATE_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("TOLLGATE_SSL_REDIRECT", BEHIND_TLS_PROXY and not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# Without DEBUG the session and CSRF cookies travel over HTTPS only (browsers count http://localhost and
# 127.0.0.1 as secure, so a local server still logs in); 0 for a plain-HTTP installation on a private network.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("TOLLGATE_SECURE_COOKIES", not DEBUG)
# HSTS: browsers that saw it over HTTPS use nothing else for this long (sent on HTTPS answers only). A year,
# the usual value; start lower (300) while trying HTTPS out, 0 leaves the header to the proxy.
SECURE_HSTS_SECONDS = int(os.environ.get("TOLLGATE_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("TOLLGATE_HSTS_INCLUDE_SUBDOMAINS", True)
# Asking browsers to ship the host in their preload lists is the domain owner's decision (hstspreload.org),
# hard to undo: off unless asked for, and check --deploy's reminder of it (security.W021) is silenced below.
SECURE_HSTS_PRELOAD = env_bool("TOLLGATE_HSTS_PRELOAD", False)
# Content-Security-Policy on every answer (portal/security.py): scripts, styles, images and fonts from this
# site only, no inline script or style, no framing. TOLLGATE_CSP replaces the policy; TOLLGATE_CSP_REPORT_ONLY=1
# sends it as Content-Security-Policy-Report-Only (browsers report, enforce nothing) while trying a new one.
TOLLGATE_CSP = os.environ.get("TOLLGATE_CSP") or (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
TOLLGATE_CSP_REPORT_ONLY = env_bool("TOLLGATE_CSP_REPORT_ONLY", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "portal",
    "portal.dashboard",
    "billing.audit",
    "billing.customers",
    "billing.catalog",
    "billing.usage",
    "billing.guardrails",
    "billing.invoicing",
    "billing.payments",
    "billing.notify",
    "ledger",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portal.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.errors.HostileRequestMiddleware",
    "portal.throttle.LoginThrottleMiddleware",
    "portal.throttle.AnonymousApiThrottleMiddleware",
    "billing.audit.context.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portal.errors.DomainErrorMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

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

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    # Ingest's few fixed statements (server-side binding: billing.usage.services) are prepared once per
    # connection and reused; Django's own queries bind client-side and are never prepared. 0 disables it
    # (a pooler in transaction mode older than PgBouncer 1.21).
    _prepare = int(os.environ.get("DATABASE_PREPARE_THRESHOLD", "2"))
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = _prepare or None
    # A pool of up to DATABASE_POOL_SIZE connections per process (psycopg_pool, Django's "pool" option)
    # instead of one kept connection per thread; portal.asgi turns it on (10) before Django starts, since
    # there each request runs in a thread of its own. A request waits at most DATABASE_POOL_TIMEOUT seconds
    # for a connection (then 503 unavailable, as with the database down).
    _pool_size = int(os.environ.get("DATABASE_POOL_SIZE", "0"))
    if _pool_size > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # a connection goes back to the pool when its request ends
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1, "max_size": _pool_size,
            "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT", "5")),
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "tollgate.sqlite3"),
            "OPTIONS": {
                # web, worker and beat share the file: WAL lets readers run beside one writer and
                # IMMEDIATE transactions take the write lock up front instead of failing on upgrade.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # a file, not shared memory, for tests too: threads and the live server see one database; one
            # per test process, so that two test runs side by side never share (and corrupt) it
            "TEST": {"NAME": str(DATA_DIR / f"test_tollgate_{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The rollups' covering indexes (INCLUDE columns) are a PostgreSQL optimisation; SQLite builds them
# without the included columns, which is what it should do: no warning on every migrate.
SILENCED_SYSTEM_CHECKS = ["models.W040", "security.W021"]  # W021: HSTS preload, see SECURE_HSTS_PRELOAD

# --- Redis, cache, Celery ------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tollgate"}}

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # A message a worker took but did not acknowledge (a countdown task it holds, an acks_late task it runs)
    # goes back to the queue this long after it was taken, when that worker is gone or lost its connection
    # meanwhile. Longer than any countdown (Stripe retries back off to an hour) and any task. Workers look for
    # such messages every 10 s (kombu's default is every 100 s: 10 s, throttled to 1 in 10).
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "visibility_timeout": int(os.environ.get("TOLLGATE_BROKER_VISIBILITY_TIMEOUT", "7200")),
        "unacked_restore_throttle": 1}
else:
    _queue_dir = DATA_DIR / "celery" / "queue"
    _processed_dir = DATA_DIR / "celery" / "processed"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    _processed_dir.mkdir(parents=True, exist_ok=True)
    (DATA_DIR / "celery" / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "control_folder": str(DATA_DIR / "celery" / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's consumer, made to survive a broker outage while it holds unacknowledged messages (portal/worker.py)
CELERY_WORKER_CONSUMER = "portal.worker:Consumer"
# Reconnect for as long as the broker is away (Celery gives up after 100 tries, about 50 minutes, by default)
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A running acks_late task whose connection is lost is stopped: it could not be acknowledged, so the broker
# hands it out again, and every acks_late task is idempotent (Celery 6's default, without the warning)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True

# --- Ledger ----------------------------------------------------------------------------------------
TIGERBEETLE_ADDRESSES = os.environ.get("TIGERBEETLE_ADDRESSES", "")
TIGERBEETLE_CLUSTER_ID = int(os.environ.get("TIGERBEETLE_CLUSTER_ID", "0"))
LEDGER_BACKEND = os.environ.get("LEDGER_BACKEND") or ("tigerbeetle" if TIGERBEETLE_ADDRESSES else "sql")
LEDGER_TIMEOUT_SECONDS = float(os.environ.get("LEDGER_TIMEOUT_SECONDS", "2"))
# The ledger id namespace of this installation is stored in the database (ledger.models.Installation);
# set this only to reach the ledger state of another database (a restore onto a fresh one).
TOLLGATE_LEDGER_NAMESPACE = os.environ.get("TOLLGATE_LEDGER_NAMESPACE")

# --- Tollgate ------------------------------------------------------------------------------------
# Requests per second per API key; 0 switches the limiter off. Shared across processes with Redis.
TOLLGATE_RATE_LIMIT_PER_SECOND = int(os.environ.get("TOLLGATE_RATE_LIMIT_PER_SECOND", "2000"))
# Abuse limits per client address (portal/throttle.py): failed logins per address and username and per address
# in a window, and API requests that authenticate as no one per minute (0 switches that one off).
TOLLGATE_LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("TOLLGATE_LOGIN_FAILURES_PER_ACCOUNT", "5"))
TOLLGATE_LOGIN_FAILURES_PER_IP = int(os.environ.get("TOLLGATE_LOGIN_FAILURES_PER_IP", "50"))
TOLLGATE_LOGIN_WINDOW_SECONDS = int(os.environ.get("TOLLGATE_LOGIN_WINDOW_SECONDS", "900"))
TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE = int(os.environ.get("TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE", "120"))
# Behind a reverse proxy: the request.META key of the header it sets to the client's address (HTTP_X_REAL_IP);
# unset, REMOTE_ADDR. Set it only when every request comes through that proxy (a client could forge it).
TOLLGATE_CLIENT_IP_HEADER = os.environ.get("TOLLGATE_CLIENT_IP_HEADER", "")
TOLLGATE_MAX_FUTURE_SECONDS = 300  # contract: a timestamp at most 5 minutes in the future
# PostgreSQL: raw events are partitioned by month; beat keeps this month and the next ones created (docs/scaling.md)
TOLLGATE_EVENT_PARTITIONS_AHEAD = int(os.environ.get("TOLLGATE_EVENT_PARTITIONS_AHEAD", "3"))
TOLLGATE_BATCH_MAX = 1000
# Beat's ops-heartbeat runs this often (portal/celery.py); /readyz fails when the last beat is older than twice that.
TOLLGATE_HEARTBEAT_SECONDS = float(os.environ.get("TOLLGATE_HEARTBEAT_SECONDS", "60"))
# Request bodies: portal.errors.HostileRequestMiddleware answers 413 to a body whose Content-Length is over
# its path's limit before anything reads it: a batch (events/batch, settle) as large as the contract allows
# (billing.usage.contract.batch_max_bytes: about 13 MB), every other body this many bytes. Django's own check
# is off, since it cannot tell the paths apart (and answers an HTML 400).
TOLLGATE_BODY_MAX_BYTES = int(os.environ.get("TOLLGATE_BODY_MAX_BYTES", str(2_621_440)))
DATA_UPLOAD_MAX_MEMORY_SIZE = None
# Billing periods (docs/operations.md "Periods, late events and invoices"): a period stays open this long
# after its end; events for a closed period are refused (422 period_closed).
TOLLGATE_PERIOD_GRACE_SECONDS = int(os.environ.get("TOLLGATE_PERIOD_GRACE_SECONDS", "3600"))
# Ingest caches "closed until" this long per process; finalization waits longer than that after a close
# so that no event accepted on a stale answer is left out of a finalized invoice.
TOLLGATE_PERIOD_CACHE_SECONDS = 5
TOLLGATE_FINALIZE_DELAY_SECONDS = int(os.environ.get("TOLLGATE_FINALIZE_DELAY_SECONDS", "60"))
# Operator identity printed on invoices (docs/operations.md, "Invoice documents"): legal name, postal address (lines separated by
# "\n" or "|"), tax id, contact email, and a logo image file (PNG/JPEG/SVG path, embedded in the document).
TOLLGATE_SELLER = {
    "name": os.environ.get("TOLLGATE_SELLER_NAME", "Tollgate Demo Operator"),
    "address": os.environ.get("TOLLGATE_SELLER_ADDRESS", "").replace("|", "\n").replace("\\n", "\n"),
    "email": os.environ.get("TOLLGATE_SELLER_EMAIL", "billing@tollgate.localhost"),
    "tax_id": os.environ.get("TOLLGATE_SELLER_TAX_ID", ""),
    "logo": os.environ.get("TOLLGATE_SELLER_LOGO", ""),
}
# Payment terms: an invoice is due this many days after it is issued (finalized).
TOLLGATE_PAYMENT_TERMS_DAYS = int(os.environ.get("TOLLGATE_PAYMENT_TERMS_DAYS", "30"))
# Tax: the percent charged on every invoice (a plan's tax_rate overrides it, and a customer's own overrides both),
# the line's name, and what an invoice of a reverse-charge customer says instead of a tax amount.
TOLLGATE_TAX_RATE = os.environ.get("TOLLGATE_TAX_RATE", "0")
TOLLGATE_TAX_LABEL = os.environ.get("TOLLGATE_TAX_LABEL", "Tax")
TOLLGATE_REVERSE_CHARGE_TEXT = os.environ.get(
    "TOLLGATE_REVERSE_CHARGE_TEXT", "Reverse charge: the customer accounts for the tax due on this supply.")

# --- Stripe (billing/payments is the only code that talks to it) ---------------------------------
# No secret key: the Stripe integration is off (nothing is queued or pushed); rows still record what
# would be synced, and the beat task pushes them once a key is set.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")
STRIPE_METER_EVENTS_BASE = os.environ.get("STRIPE_METER_EVENTS_BASE", "https://meter-events.stripe.com")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300  # a signed webhook older than 5 minutes is refused (replay window)
STRIPE_TIMEOUT_SECONDS = float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "20"))
# The API version every request asks for (docs/payments.md): pinned here, not left to the SDK's default,
# which moves with the SDK in the lock file. Set the webhook endpoint in Stripe to the same version.
STRIPE_API_VERSION = os.environ.get("STRIPE_API_VERSION", "2026-10-28.endive")
# Due days of a Stripe invoice sent to a customer without a default payment method (collection_method
# send_invoice); a customer with one is charged automatically.
STRIPE_DAYS_UNTIL_DUE = int(os.environ.get("STRIPE_DAYS_UNTIL_DUE", "30"))
# The prefix of every idempotency key, meter-event identifier and metadata tag sent to Stripe. Unset: the
# installation's id stored with the database (ledger.models.Installation), so two installations sharing
# one Stripe account never collide (docs/payments.md "Several installations, one Stripe account").
STRIPE_INSTALLATION_ID = os.environ.get("STRIPE_INSTALLATION_ID", "")

# --- Paystack (the second provider: plans billed in paystack_invoices mode) -----------------------------
# No secret key: the Paystack integration is off (no payment links; every webhook is refused with 400).
PAYSTACK_SECRET_KEY = os.environ.get("PAYSTACK_SECRET_KEY", "")
PAYSTACK_API_BASE = os.environ.get("PAYSTACK_API_BASE", "https://api.paystack.co")
PAYSTACK_CALLBACK_URL = os.environ.get("PAYSTACK_CALLBACK_URL", "")  # where Paystack's checkout returns the payer
PAYSTACK_TIMEOUT_SECONDS = float(os.environ.get("PAYSTACK_TIMEOUT_SECONDS", "20"))

# --- Email ------------------------------------------------------------------------------------------
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = float(os.environ["EMAIL_TIMEOUT"]) if os.environ.get("EMAIL_TIMEOUT") else 30.0
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "billing@tollgate.localhost")
# EMAIL_URL (smtp://user:pass@host:port, smtp+tls://, smtp+ssl://, console://, file:///dir, locmem://) sets
# the backend and what its URL names, over the EMAIL_* variables above (portal/email_url.py).
if os.environ.get("EMAIL_URL"):
    from portal.email_url import email_settings_from_url

    globals().update(email_settings_from_url(os.environ["EMAIL_URL"]))
# Absolute links in emails (the alert email's dashboard link) start with this.
TOLLGATE_BASE_URL = os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8000")
# The operator's staff who are emailed when a spend anomaly opens (comma-separated addresses).
TOLLGATE_OPERATOR_EMAILS = [e.strip() for e in os.environ.get("TOLLGATE_OPERATOR_EMAILS", "").split(",") if e.strip()]

# Outbound webhooks (billing.notify): each POST waits this long at most; a delivery is retried this long
TOLLGATE_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("TOLLGATE_WEBHOOK_TIMEOUT_SECONDS", "10"))
TOLLGATE_WEBHOOK_RETRY_HOURS = float(os.environ.get("TOLLGATE_WEBHOOK_RETRY_HOURS", "72"))

# The LLM gateway (portal/gateway.py, docs/gateway.md): the OpenAI-compatible API it forwards to (the base
# that /chat/completions is appended to), its key, the meter it bills, and the completion tokens reserved
# when a request names no max_tokens.
GATEWAY_UPSTREAM_URL = os.environ.get("GATEWAY_UPSTREAM_URL", "")
GATEWAY_UPSTREAM_KEY = os.environ.get("GATEWAY_UPSTREAM_KEY", "")
GATEWAY_METER = os.environ.get("GATEWAY_METER", "llm_tokens")
GATEWAY_DEFAULT_MAX_TOKENS = int(os.environ.get("GATEWAY_DEFAULT_MAX_TOKENS", "4096"))
GATEWAY_TIMEOUT_SECONDS = float(os.environ.get("GATEWAY_TIMEOUT_SECONDS", "120"))

# --- Auth, i18n, static -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"  # customer users land on their customer, staff on the customer list
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve straight from the source folders: no collectstatic step in dev

# --- REST API ---------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "billing.customers.authentication.ApiKeyAuthentication",
        "billing.customers.authentication.SessionPrincipalAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["billing.common.auth.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["billing.common.auth.KeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["portal.parsers.SafeJSONParser"],
    "EXCEPTION_HANDLER": "portal.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "portal.openapi.TollgateAutoSchema",
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": "Usage metering, quota enforcement and billing for AI products.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "portal.openapi.date_examples_now"],
    # choice sets that share a field name ("status", "action") each get their own enum, named for what it is
    "ENUM_NAME_OVERRIDES": {
        "IngestStatusEnum": ["accepted", "duplicate", "rejected"],
        "ReservationStatusEnum": ["pending", "settled", "released", "expired"],
        "InvoiceStatusEnum": ["draft", "finalized", "paid", "void", "uncollectible"],
        "DeliveryStatusEnum": ["pending", "delivered", "failed", "cancelled"],
        "AnomalyStatusEnum": ["open", "resolved"],
        "GrantStatusEnum": ["created", "duplicate"],
        "ThresholdStatusEnum": ["created", "exists"],
        "BudgetActionEnum": ["block", "alert"],
        "AnomalyActionEnum": ["alert", "pause"],
    },
    # No badge from validator.swagger.io (an image from elsewhere, which the CSP refuses anyway)
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # stripe logs every request and response at INFO; our sync rows and warnings already say what matters
    # weasyprint and fontTools narrate every PDF they render at INFO
    "loggers": {"django.server": {"level": "WARNING"}, "stripe": {"level": "WARNING"},
                "weasyprint": {"level": "WARNING"}, "fontTools": {"level": "WARNING"}},
}
