"""mvmatch settings. Every deployment choice comes from the environment.

Embedded default (no servers): SQLite, a filesystem Celery broker and result store, milvus-lite.
Scale-out: DATABASE_URL=postgres://..., CELERY_BROKER_URL=redis://..., MILVUS_URI=http://milvus:19530,
and GPU workers consuming the MVMATCH_ML_QUEUE queue with MVMATCH_DEVICE=cuda.
"""
import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MVMATCH_VAR_DIR", BASE_DIR / "var")).resolve()


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --- Security: production by default ------------------------------------------------------
DEBUG = os.environ.get("MVMATCH_DEBUG", "0") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is not set (required unless MVMATCH_DEBUG=1); "
                                   "deploy/demo.sh generates one into var/")
    SECRET_KEY = "debug-only-key-never-used-with-debug-off"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")
# Served over HTTPS (directly or behind a proxy that sets X-Forwarded-Proto): secure cookies, HSTS, redirect.
MVMATCH_HTTPS = os.environ.get("MVMATCH_HTTPS", "0") == "1"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = MVMATCH_HTTPS
SECURE_HSTS_SECONDS = env_int("MVMATCH_HSTS_SECONDS", 31536000) if MVMATCH_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = MVMATCH_HTTPS
if os.environ.get("MVMATCH_BEHIND_PROXY", "0") == "1":
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

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
    "catalog",
    "matching",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "mvmatch.middleware.RequestSizeLimit",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mvmatch.urls"
WSGI_APPLICATION = "mvmatch.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'mvmatch.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and worker share the file: wait for locks instead of failing at once; write-ahead logging so that
    # a reader (a lookup, a worker loading its item) never blocks a writer, nor a writer a reader.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE",
                                       "init_command": "PRAGMA journal_mode=WAL"}
    if os.environ.get("MVMATCH_TEST_DB"):
        # Tests that start a real worker process need the test database in a file both can open.
        DATABASES["default"]["TEST"] = {"NAME": os.environ["MVMATCH_TEST_DB"]}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "media/"  # storage-relative names only: files are served by matching.media after a permission check
MEDIA_ROOT = Path(os.environ.get("MVMATCH_MEDIA_ROOT", VAR_DIR / "media"))
# How matching.media hands a permitted file to the client: "" = Django streams it (FileResponse);
# "nginx" = X-Accel-Redirect to MVMATCH_MEDIA_INTERNAL_URL + name (an `internal` location on MEDIA_ROOT);
# "sendfile" = X-Sendfile with the file's path (Apache mod_xsendfile, lighttpd).
MVMATCH_MEDIA_OFFLOAD = os.environ.get("MVMATCH_MEDIA_OFFLOAD", "")
MVMATCH_MEDIA_INTERNAL_URL = os.environ.get("MVMATCH_MEDIA_INTERNAL_URL", "/protected-media/")

# Uploads: large videos stream to a temporary file instead of memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Django's cache holds the rate limits' counts, so it must be shared by every web process: files in var/ on
# one machine (the default), Redis (MVMATCH_CACHE_URL=redis://...) across machines.
CACHES = {"default": (
    {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["MVMATCH_CACHE_URL"],
     "KEY_PREFIX": os.environ.get("MVMATCH_REDIS_KEY_PREFIX", "")}
    if os.environ.get("MVMATCH_CACHE_URL")
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(VAR_DIR / "cache")})}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # Per user / per anonymous address on every endpoint, plus scopes (mvmatch.throttles) on token issue,
    # uploads and lookups. Rates "N/second|minute|hour|day" from the environment.
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle",
                                 "rest_framework.throttling.UserRateThrottle",
                                 "mvmatch.throttles.ActionScopedThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("MVMATCH_THROTTLE_ANON", "60/min"),
        "user": os.environ.get("MVMATCH_THROTTLE_USER", "600/min"),
        "token": os.environ.get("MVMATCH_THROTTLE_TOKEN", "10/min"),
        "upload": os.environ.get("MVMATCH_THROTTLE_UPLOAD", "30/hour"),
        "lookup": os.environ.get("MVMATCH_THROTTLE_LOOKUP", "120/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mvmatch API",
    "DESCRIPTION": "Products, micro-videos and the matches between them, in both directions.",
    "VERSION": "0.1.0",
    "COMPONENT_SPLIT_REQUEST": True,  # a category is sent as an id or path and comes back as an object
    "ENUM_NAME_OVERRIDES": {"IndexStateEnum": "matching.indexing.IndexState",
                            "ReviewEnum": "matching.models.Match.Review"},
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# --- Celery -------------------------------------------------------------------------------
def _redis_broker_options(visibility: int) -> dict:
    """visibility_timeout: how long Redis waits before it hands an unacknowledged task (its worker died) to
    another worker. Workers look for such tasks every interval x throttle seconds (kombu's default is over a
    minute and a half, whatever the timeout): here every fifth of the timeout, between 1 s and a minute, so a
    dead worker's task comes back soon after its timeout. Each look is one indexed range query on Redis."""
    return {"visibility_timeout": visibility, "unacked_restore_interval": max(1, min(60, visibility // 5)),
            "unacked_restore_throttle": 1}


CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
_broker_dir = VAR_DIR / "celery" / "broker"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    # polling_interval: kombu's default (1 s) caps the embedded worker at one task a second.
    {"data_folder_in": str(_broker_dir), "data_folder_out": str(_broker_dir), "store_processed": False,
     "control_folder": str(_broker_dir.parent / "control"), "polling_interval": 0.1}
    if CELERY_BROKER_URL.startswith("filesystem")
    else _redis_broker_options(env_int("MVMATCH_BROKER_VISIBILITY_SECONDS", 3600))
)
# Several deployments (or test runs) can share one Redis: every broker and result key starts with this.
MVMATCH_REDIS_KEY_PREFIX = os.environ.get("MVMATCH_REDIS_KEY_PREFIX", "")
if MVMATCH_REDIS_KEY_PREFIX:
    CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = MVMATCH_REDIS_KEY_PREFIX
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"global_keyprefix": MVMATCH_REDIS_KEY_PREFIX}
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'celery' / 'results'}")
# The server-less broker and result store are folders; they must exist before web or worker use them.
for _folder in ([_broker_dir, _broker_dir.parent / "control"] if CELERY_BROKER_URL.startswith("filesystem") else []) + (
        [Path(CELERY_RESULT_BACKEND.removeprefix("file://"))] if CELERY_RESULT_BACKEND.startswith("file://") else []):
    _folder.mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = False
MVMATCH_ML_QUEUE = os.environ.get("MVMATCH_ML_QUEUE", "ml")
CELERY_TASK_ROUTES = {"matching.tasks.ingest_*": {"queue": MVMATCH_ML_QUEUE}}  # GPU workers consume this queue

# --- Vector index ---------------------------------------------------------------------------
MILVUS_URI = os.environ.get("MILVUS_URI", str(VAR_DIR / "milvus.db"))
MILVUS_TOKEN = os.environ.get("MILVUS_TOKEN") or None
MILVUS_COLLECTION_PREFIX = os.environ.get("MILVUS_COLLECTION_PREFIX", "mvmatch_")

# --- Models and inputs --------------------------------------------------------------------
MVMATCH_DEVICE = os.environ.get("MVMATCH_DEVICE", "cpu")
MVMATCH_MODELS_DIR = Path(os.environ.get("MVMATCH_MODELS_DIR", VAR_DIR / "models"))
MVMATCH_MAX_UPLOAD_BYTES = env_int("MVMATCH_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
MVMATCH_MAX_VIDEO_SECONDS = env_int("MVMATCH_MAX_VIDEO_SECONDS", 180)
MVMATCH_MAX_CAPTION_CHARS = env_int("MVMATCH_MAX_CAPTION_CHARS", 2200)
MVMATCH_MAX_PHOTO_BYTES = env_int("MVMATCH_MAX_PHOTO_BYTES", 20 * 1024 * 1024)
MVMATCH_MAX_PHOTOS = env_int("MVMATCH_MAX_PHOTOS", 10)
# A photo's pixel count is read from its header and checked before it is decoded (catalog.photos);
# decoded photos are reduced at once to this longest side, which is all the image tower needs.
MVMATCH_MAX_PHOTO_PIXELS = env_int("MVMATCH_MAX_PHOTO_PIXELS", 50_000_000)
MVMATCH_PHOTO_DECODE_SIDE = env_int("MVMATCH_PHOTO_DECODE_SIDE", 512)
# Requests whose Content-Length is above this are refused before their body is read (mvmatch.middleware).
MVMATCH_MAX_REQUEST_BYTES = env_int(
    "MVMATCH_MAX_REQUEST_BYTES",
    max(MVMATCH_MAX_UPLOAD_BYTES, MVMATCH_MAX_PHOTOS * MVMATCH_MAX_PHOTO_BYTES) + 1024 * 1024)
MVMATCH_FRAMES_PER_VIDEO = env_int("MVMATCH_FRAMES_PER_VIDEO", 8)
MVMATCH_KEYFRAME_SIZE = env_int("MVMATCH_KEYFRAME_SIZE", 160)
MVMATCH_SUGGESTIONS = env_int("MVMATCH_SUGGESTIONS", 10)
# Two-stage retrieval: the index returns this many candidates and the model's second stage (ml.serving.two_stage)
# reorders them; 0 = index order only.
MVMATCH_RERANK_TOP_N = env_int("MVMATCH_RERANK_TOP_N", 20)
MVMATCH_VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")

# --- Work that must not be lost (matching.indexing, matching.reconcile) ----------------------------
MVMATCH_TASK_LEASE_SECONDS = env_int("MVMATCH_TASK_LEASE_SECONDS", 1800)  # longest one ingest may hold an item
MVMATCH_HEARTBEAT_SECONDS = env_int("MVMATCH_HEARTBEAT_SECONDS", 5)  # how often a worker says it is alive
MVMATCH_WORKER_DEAD_AFTER_SECONDS = env_int("MVMATCH_WORKER_DEAD_AFTER_SECONDS", 30)
MVMATCH_RECONCILE_SECONDS = env_int("MVMATCH_RECONCILE_SECONDS", 30)  # each worker's sweep; 0 = off
MVMATCH_QUEUED_RESEND_SECONDS = env_int("MVMATCH_QUEUED_RESEND_SECONDS", 900)  # queued this long: send again
MVMATCH_MAX_ATTEMPTS = env_int("MVMATCH_MAX_ATTEMPTS", 3)  # tasks interrupted on one item before it fails

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},  # libraries (open_clip logs at INFO on root)
    "loggers": {name: {"level": os.environ.get("MVMATCH_LOG_LEVEL", "INFO")}
                for name in ("catalog", "matching", "workers", "ml", "celery")},
}

# --- Serving: lookups and the vector index (matching.feature_cache, matching.vector_index) ----------------
# Per-process cache of the candidates' unpacked second-stage features, in MiB (0: read them every lookup).
MVMATCH_FEATURE_CACHE_MB = env_int("MVMATCH_FEATURE_CACHE_MB", 256)
# torch threads of a web worker (gunicorn) and of bench_lookup: lookups are small ops, parallel only across requests
MVMATCH_TORCH_THREADS = env_int("MVMATCH_TORCH_THREADS", 1)
# The vector index (matching.vector_index.collection_options): "auto" = the measured choice per backend (HNSW on a
# Milvus server, FLAT on milvus-lite) or any Milvus index type; parameters as JSON objects override the chosen ones.
# They apply to collections created from then on. Lookups read at MVMATCH_INDEX_CONSISTENCY.
MVMATCH_INDEX_TYPE = os.environ.get("MVMATCH_INDEX_TYPE", "auto")
MVMATCH_INDEX_PARAMS = json.loads(os.environ.get("MVMATCH_INDEX_PARAMS") or "{}")
MVMATCH_SEARCH_PARAMS = json.loads(os.environ.get("MVMATCH_SEARCH_PARAMS") or "{}")
MVMATCH_INDEX_CONSISTENCY = os.environ.get("MVMATCH_INDEX_CONSISTENCY", "Bounded")
# Static files (admin, pages) served by the web process itself (whitenoise), from STATIC_ROOT after
# `manage.py collectstatic` (deploy/demo.sh runs it) or from the apps' folders where it was not run.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "whitenoise.middleware.WhiteNoiseMiddleware")
WHITENOISE_USE_FINDERS = True
