"""mvmatch settings. Every deployment choice comes from the environment.

Embedded default (no servers): SQLite, a filesystem Celery broker and result store, milvus-lite.
Scale-out: DATABASE_URL=postgres://..., CELERY_BROKER_URL=redis://..., MILVUS_URI=http://milvus:19530,
and GPU workers consuming the MVMATCH_ML_QUEUE queue with MVMATCH_DEVICE=cuda.
"""
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MVMATCH_VAR_DIR", BASE_DIR / "var")).resolve()


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

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
    # Web and worker share the file: wait for locks instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
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
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MVMATCH_MEDIA_ROOT", VAR_DIR / "media"))

# Uploads: large videos stream to a temporary file instead of memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mvmatch API",
    "DESCRIPTION": "Products, micro-videos and the matches between them, in both directions.",
    "VERSION": "0.1.0",
}

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
_broker_dir = VAR_DIR / "celery" / "broker"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    # polling_interval: kombu's default (1 s) caps the embedded worker at one task a second.
    {"data_folder_in": str(_broker_dir), "data_folder_out": str(_broker_dir), "store_processed": False,
     "polling_interval": 0.1}
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'celery' / 'results'}")
# The server-less broker and result store are folders; they must exist before web or worker use them.
for _folder in ([_broker_dir] if CELERY_BROKER_URL.startswith("filesystem") else []) + (
        [Path(CELERY_RESULT_BACKEND.removeprefix("file://"))] if CELERY_RESULT_BACKEND.startswith("file://") else []):
    _folder.mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = False
MVMATCH_ML_QUEUE = os.environ.get("MVMATCH_ML_QUEUE", "ml")
CELERY_TASK_ROUTES = {"workers.tasks.ingest_*": {"queue": MVMATCH_ML_QUEUE}}  # GPU workers consume this queue

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
MVMATCH_FRAMES_PER_VIDEO = env_int("MVMATCH_FRAMES_PER_VIDEO", 8)
MVMATCH_KEYFRAME_SIZE = env_int("MVMATCH_KEYFRAME_SIZE", 160)
MVMATCH_SUGGESTIONS = env_int("MVMATCH_SUGGESTIONS", 10)
# Two-stage retrieval: the index returns this many candidates and the model's second stage (ml.two_stage)
# reorders them; 0 = index order only.
MVMATCH_RERANK_TOP_N = env_int("MVMATCH_RERANK_TOP_N", 50)
MVMATCH_VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},  # libraries (open_clip logs at INFO on root)
    "loggers": {name: {"level": os.environ.get("MVMATCH_LOG_LEVEL", "INFO")}
                for name in ("catalog", "matching", "workers", "ml", "celery")},
}
