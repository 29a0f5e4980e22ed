"""Gantry control-plane settings.

Everything that differs between a laptop and production comes from the environment; the
defaults are the local ones (loopback PostgreSQL and Redis, DEBUG off so no stack trace ever
reaches a client). Secrets have no usable default outside development: `make up` generates
its own once (.state/secrets.env), the tests theirs per run (tests/suite_env.py).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from cloud.production import DEVELOPMENT_SECRET_KEY
from cloud.validators import DNS_LABEL_RE, MAX_DNS_NAME_LENGTH, is_dns_name

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()  # empty counts as unset (compose passes "${VAR:-}")
    try:
        return int(value) if value else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None


def env_port_range(name: str, default: str) -> tuple[int, int]:
    """`20000-20999` -> (20000, 20999): a non-empty range of TCP ports."""
    value = os.environ.get(name, "").strip() or default
    low, sep, high = (part.strip() for part in value.partition("-"))
    if sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535:
        return int(low), int(high)
    raise ImproperlyConfigured(f"{name} must be a range of TCP ports LOW-HIGH (1 <= LOW <= HIGH <= 65535), "
                               f"e.g. 20000-20999; not {value!r}")


def env_host(name: str, default: str) -> str:
    """A host name or an IP address literal, as it goes into a URL (an IPv6 one in brackets)."""
    value = os.environ.get(name, "").strip().rstrip(".").lower() or default
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        if is_dns_name(value):
            return value
        raise ImproperlyConfigured(f"{name} must be a host name or an IP address, not {value!r}") from None
    return f"[{address}]" if address.version == 6 else str(address)


def env_header_pair(name: str) -> tuple[str, str] | None:
    """`X-Forwarded-Proto,https` or `HTTP_X_FORWARDED_PROTO,https` -> ("HTTP_X_FORWARDED_PROTO", "https")."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    header, sep, expected = (part.strip() for part in value.partition(","))
    if not sep or not header or not expected:
        raise ImproperlyConfigured(f"{name} must be HEADER,value (e.g. HTTP_X_FORWARDED_PROTO,https), not {value!r}")
    header = header.upper().replace("-", "_")
    return (header if header.startswith("HTTP_") else "HTTP_" + header), expected


def env_endpoint_domain(name: str, default: str) -> str:
    """The domain deployments' endpoint names live under: a DNS name (lowercased) short enough that
    `<63-character label>.<domain>` is still one."""
    value = os.environ.get(name, "").strip().rstrip(".").lower() or default
    room = MAX_DNS_NAME_LENGTH - 64  # a full label and its dot in front of it
    if not is_dns_name(value) or len(value) > room:
        raise ImproperlyConfigured(
            f"{name} must be a DNS name (labels matching {DNS_LABEL_RE.pattern} joined by dots, "
            f"at most {room} characters), e.g. gantry.example.com; not {value!r}")
    return value


# Unset, the development key: enough with DEBUG on. With DEBUG off the web process, Celery and
# manage.py refuse it, as they refuse an empty FERNET_KEYS or ALLOWED_HOSTS=* (cloud/production.py).
SECRET_KEY = os.environ.get("SECRET_KEY") or DEVELOPMENT_SECRET_KEY
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")

# HTTPS, only from the environment (docs/operations.md, "Production"): unset, the plane serves
# plain HTTP, as behind a proxy that terminates TLS, with DEBUG on or off alike.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe these over plain HTTP; a redirect would read as down.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# "HTTP_X_FORWARDED_PROTO,https": the header a trusted proxy sets, and the value meaning HTTPS.
# Only behind a proxy that always sets (or strips) that header, or clients could claim HTTPS.
SECURE_PROXY_SSL_HEADER = env_header_pair("SECURE_PROXY_SSL_HEADER")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc files, served by us (no CDN)
    "oauth2_provider",
    "channels",
    "accounts",
    "nodes",
    "templates.apps.CatalogConfig",
    "billing",
    "volumes",
    "cloud.deployments",
    "django_htmx",
    "cloud.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "cloud.errors.ApiProblemMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "cloud.dashboard.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "cloud.urls"
ASGI_APPLICATION = "cloud.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "cloud" / "html"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "cloud.dashboard.tenancy.nav_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry"),
        conn_max_age=0,
    )
}
# A psycopg connection pool per process. Under ASGI every request runs its sync code in a fresh
# thread, and Django's connections are per thread, so CONN_MAX_AGE reuse never happens: each
# request paid a new PostgreSQL connection (~25 ms here). The pool hands back a warm one.
if env_bool("DB_POOL", True):
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": int(os.environ.get("DB_POOL_MIN", "2")),
        "max_size": int(os.environ.get("DB_POOL_MAX", "20")),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_PREFIX", "gantry"),
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("CHANNELS_PREFIX", "gantry")},
    }
}

# A node silent this long is offline and its replicas are lost (heartbeats come every 5 s).
NODE_LIVENESS_WINDOW_S = float(os.environ.get("NODE_LIVENESS_WINDOW_S", "30"))
NODE_DRAIN_TIMEOUT_S = float(os.environ.get("NODE_DRAIN_TIMEOUT_S", "600"))
# Registries (host[:port]) customers may name although they sit on a loopback, private or
# other special address, e.g. a local registry; nodes get the same list (cloud/registries.py).
GANTRY_TRUSTED_REGISTRIES = env_list("GANTRY_TRUSTED_REGISTRIES", "")
# Issue 25: each deployment's endpoint is https://<its endpoint label>.<this domain> on the gateway.
GANTRY_ENDPOINT_DOMAIN = env_endpoint_domain("GANTRY_ENDPOINT_DOMAIN", "gantry.localhost")
# The port the gateways serve HTTPS on, as customers reach it (shown in endpoint URLs unless 443).
GANTRY_GATEWAY_HTTPS_PORT = env_int("GANTRY_GATEWAY_HTTPS_PORT", 443)
if not 1 <= GANTRY_GATEWAY_HTTPS_PORT <= 65535:
    raise ImproperlyConfigured(f"GANTRY_GATEWAY_HTTPS_PORT must be 1-65535, not {GANTRY_GATEWAY_HTTPS_PORT}")
# A deployment's TCP ports (`expose`) each get one gateway port from this range, and customers
# reach them at tcp://GANTRY_GATEWAY_TCP_HOST:<port> (the gateways' public name or address).
GANTRY_GATEWAY_TCP_PORTS = env_port_range("GANTRY_GATEWAY_TCP_PORTS", "20000-20999")
GANTRY_GATEWAY_TCP_HOST = env_host("GANTRY_GATEWAY_TCP_HOST", "127.0.0.1")
# Every change that affects routes is pushed at once; the whole table also goes out this often,
# so a restarted gateway or a lost push heals by itself.
GANTRY_GATEWAY_PUSH_INTERVAL_S = float(env_int("GANTRY_GATEWAY_PUSH_INTERVAL_S", 10))
if GANTRY_GATEWAY_PUSH_INTERVAL_S < 1:
    raise ImproperlyConfigured("GANTRY_GATEWAY_PUSH_INTERVAL_S must be at least 1 (seconds)")

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
# One queue per deployment of the plane (tests give each run its own, so a worker of theirs
# never takes another run's tasks).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "celery")
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves it for another, tasks are idempotent
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "deployments-expire-due": {"task": "deployments.expire_due", "schedule": 10.0},
    "deployments-fleet-sweep": {"task": "deployments.fleet_sweep", "schedule": 5.0},
    "deployments-purge-idempotency-keys": {"task": "deployments.purge_idempotency_keys", "schedule": 3600.0},
    "deployments-purge-logs": {"task": "deployments.purge_logs", "schedule": 300.0},
    "deployments-purge-events": {"task": "deployments.purge_events", "schedule": 3600.0},
    # The whole route table to every gateway (services/gateways.py); a push not taken before the
    # next one is due is dropped, not queued behind it.
    "deployments-push-routes": {"task": "deployments.push_routes", "schedule": GANTRY_GATEWAY_PUSH_INTERVAL_S,
                                "options": {"expires": GANTRY_GATEWAY_PUSH_INTERVAL_S}},
    # Every gateway's request counts of the last hour (services/request_stats.py); a round not
    # taken within the minute is dropped: the next one carries the same hour.
    "deployments-collect-request-stats": {"task": "deployments.collect_request_stats", "schedule": 60.0,
                                          "options": {"expires": 60.0}},
    # Closes running intervals into usage records and charges; then kicks deployments.funds_enforce.
    "billing-meter": {"task": "billing.meter", "schedule": 60.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# /o/authorize/ sends a browser without a session here; signup links back with ?next=.
LOGIN_URL = "/accounts/login/"
# Login, signup and password-reset POSTs per client address: (attempts, window in seconds).
ACCOUNT_THROTTLE = (int(os.environ.get("ACCOUNT_THROTTLE_ATTEMPTS", "20")), int(os.environ.get("ACCOUNT_THROTTLE_WINDOW_S", "300")))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serving from the finders keeps `make up` free of a collectstatic step; production runs
# collectstatic and turns this off.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

# Secrets at rest (secret env, registry passwords) use Fernet. FERNET_KEYS is a comma-separated
# list, newest first, so keys can be rotated without re-encrypting everything at once. Unset,
# a key derived from SECRET_KEY is used, with DEBUG on only (cloud/production.py).
FERNET_KEYS = env_list("FERNET_KEYS", "")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication",
        "cloud.auth.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["cloud.auth.ScopedTenantPermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "cloud.errors.problem_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["cloud.auth.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": os.environ.get("API_RATE_LIMIT", "600/min")},
    "UNAUTHENTICATED_USER": None,
}

SCOPES = {
    "deployments:read": "Read deployments, replicas, logs and events",
    "deployments:write": "Create, change, start, stop and delete deployments",
    "templates:read": "Read the template and hardware catalog (and manage private templates with deployments:write)",
    "volumes:read": "Read volumes",
    "volumes:write": "Create and delete volumes (attaching one to a deployment needs deployments:write too)",
    "billing:read": "Read balance, usage and statements",
    "billing:write": "Change billing settings: the monthly spend limit",
    "nodes:admin": "Operate the fleet (staff only)",
}
CUSTOMER_SCOPES = ["deployments:read", "deployments:write", "volumes:read", "volumes:write", "templates:read",
                   "billing:read", "billing:write"]

OAUTH2_PROVIDER = {
    "SCOPES": SCOPES,
    "DEFAULT_SCOPES": CUSTOMER_SCOPES,
    "PKCE_REQUIRED": True,
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("ACCESS_TOKEN_EXPIRE_SECONDS", "3600")),
    "REFRESH_TOKEN_EXPIRE_SECONDS": 30 * 24 * 3600,
    "ROTATE_REFRESH_TOKEN": True,
    # Introspection is answered for resource servers holding a token with this scope or with
    # client credentials of a confidential client (DOT's default behaviour).
    # http stays allowed here only so the CLI's loopback redirect (RFC 8252) gets through;
    # accounts/oauth.py refuses plain HTTP to anything but a loopback address.
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https", "http"],
    # No password grant (accounts/oauth.py).
    "OAUTH2_SERVER_CLASS": "accounts.oauth.GantryServer",
    "SCOPES_BACKEND_CLASS": "accounts.oauth.GantryScopes",
    "OAUTH2_VALIDATOR_CLASS": "accounts.oauth.GantryOAuth2Validator",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Gantry API",
    "DESCRIPTION": (
        "Deploy containers on GPU microVMs. Authenticate with an OAuth2 bearer token from /o/token/; "
        "errors are RFC 9457 problem details (application/problem+json)."
    ),
    "VERSION": "1.0.0",
    # The docs pages load their scripts from our static files, pinned by the sidecar package's
    # version in pyproject.toml: they work on a machine with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"EndpointAccessEnum": "protocol.vocabulary.ENDPOINT_ACCESSES",
                            "VolumeModeEnum": "protocol.vocabulary.VOLUME_MODES"},
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "cloud.openapi.add_problem_responses"],
    "AUTHENTICATION_WHITELIST": ["oauth2_provider.contrib.rest_framework.OAuth2Authentication"],
    "OAUTH2_FLOWS": ["authorizationCode", "clientCredentials"],
    "OAUTH2_AUTHORIZATION_URL": "/o/authorize/",
    "OAUTH2_TOKEN_URL": "/o/token/",
    "OAUTH2_REFRESH_URL": "/o/token/",
    "OAUTH2_SCOPES": SCOPES,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

# Tenancy defaults for a new tenant; operators raise them per tenant in the admin.
TENANT_DEFAULT_MAX_GPUS = int(os.environ.get("TENANT_DEFAULT_MAX_GPUS", "16"))
TENANT_DEFAULT_MAX_DEPLOYMENTS = int(os.environ.get("TENANT_DEFAULT_MAX_DEPLOYMENTS", "20"))
TENANT_DEFAULT_MAX_VOLUME_GIB = int(os.environ.get("TENANT_DEFAULT_MAX_VOLUME_GIB", "500"))
# A new tenant's starting credit in USD: enough to try the platform (the CPU-only `hello`
# template costs 0.02/hour). Deployments are refused with 402 once the balance cannot cover an
# hour; set 0 where every tenant must pay first.
TENANT_DEFAULT_BALANCE = os.environ.get("TENANT_DEFAULT_BALANCE", "10")
IDEMPOTENCY_KEY_TTL_HOURS = 24
# How long log lines and events are kept (a periodic task deletes older ones in batches).
LOG_RETENTION_DAYS = float(os.environ.get("LOG_RETENTION_DAYS", "7"))
EVENT_RETENTION_DAYS = float(os.environ.get("EVENT_RETENTION_DAYS", "30"))
# Origins, besides the dashboard's own (CSRF_TRUSTED_ORIGINS) and ALLOWED_HOSTS, whose pages may
# open the log WebSocket (with a ticket): a customer's own web app, say.
WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", "")

# Billing (issue 18). A tenant whose balance runs out within BALANCE_WARNING_HOURS at its
# current rate gets a warning on its deployments; at zero balance or at its monthly spend limit
# its owners are emailed and its running deployments stop FUNDS_GRACE_MINUTES later, unless
# credit is added (or the limit raised) first.
BALANCE_WARNING_HOURS = float(os.environ.get("BALANCE_WARNING_HOURS", "24"))
FUNDS_GRACE_MINUTES = float(os.environ.get("FUNDS_GRACE_MINUTES", "15"))
# Volumes (issue 26): the price per provisioned GiB-month where the volumes' price book has no
# entry, and how long a tenant out of funds keeps its volumes (an email and an event at the
# start) before they are deleted, unless funds come back first.
VOLUME_PRICE_PER_GIB_MONTH = os.environ.get("VOLUME_PRICE_PER_GIB_MONTH", "0.10")
VOLUME_GRACE_DAYS = float(os.environ.get("VOLUME_GRACE_DAYS", "7"))
# Mail to tenants' owners goes through this backend: SMTP in production (EMAIL_HOST, ...),
# the console locally.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Gantry billing <billing@gantry.invalid>")

# Named explicitly so our models can point at DOT's (unswapped) models through settings.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"

# Issue 23, the plane's front doors (accounts/throttle.py, accounts/clientip.py, accounts/oauth.py).
# Proxies (addresses, CIDRs) whose X-Forwarded-For names the client; see docs/operations.md.
GANTRY_TRUSTED_PROXIES = env_list("GANTRY_TRUSTED_PROXIES", "")
# Failed sign-ins and token requests per client address also use ACCOUNT_THROTTLE (20 in 300 s).
# Per account or client, from addresses it never succeeded from: free failures, the cap of the
# doubling delay (s), and how long failures are remembered (s).
ACCOUNT_GUESS_DELAY = (env_int("ACCOUNT_GUESS_FREE", 5), env_int("ACCOUNT_GUESS_MAX_DELAY_S", 300), 3600)

# Bounded work on the log and event streams (docs/security.md, "Bounded work" and "Sockets").
# A log read (GET .../logs, a WebSocket replay) sends at most this much of lines' text, then
# says where to continue (a line counts as its message's UTF-8 size plus 256 bytes for the rest).
LOG_READ_BUDGET_BYTES = env_int("LOG_READ_BUDGET_BYTES", 8 << 20)
# A tenant's log lines, all its replicas together: lines past either cap are acknowledged to
# the agent but not stored, and a `system` line says how many. Well above a busy workload's
# 20,000 lines/s bursts; 0 turns a cap off.
LOG_LINES_PER_SECOND_PER_TENANT = env_int("LOG_LINES_PER_SECOND_PER_TENANT", 50000)
LOG_LINES_PER_DAY_PER_TENANT = env_int("LOG_LINES_PER_DAY_PER_TENANT", 300000000)
# The largest message a client may send on a socket: a log tail reads nothing it is sent; the
# agent's link carries frames of up to 1 MiB (protocol/wire.py), refused one by one above
# that, and the connection is closed (1009) above this.
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 64 << 10)
WS_AGENT_MAX_MESSAGE_BYTES = env_int("WS_AGENT_MAX_MESSAGE_BYTES", 2 << 20)
# How often an open log socket or event stream checks that its caller may still read (token
# not revoked or expired, still a member of the tenant).
STREAM_ACCESS_RECHECK_S = float(os.environ.get("STREAM_ACCESS_RECHECK_S", "3"))
