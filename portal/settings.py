"""Settings, read from environment variables (see README, "Configuration")."""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from .env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("PORTAL_DEBUG", False)
SECRET_KEY = env_str("PORTAL_SECRET_KEY", "insecure-dev-key-change-me" if DEBUG else None)
ALLOWED_HOSTS = env_list("PORTAL_ALLOWED_HOSTS", ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env_list("PORTAL_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "endpoints",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", "postgresql://portal@127.0.0.1:55432/portal"),
        conn_max_age=env_int("PORTAL_DB_CONN_MAX_AGE", 60, minimum=0),
        # A reused connection is checked before its first query of a request or task, so a
        # PostgreSQL restart costs one reconnect rather than one failed request.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    # Quota admission relies on PostgreSQL row locks; other engines would silently over-admit.
    from .env import ImproperlyConfiguredEnv

    raise ImproperlyConfiguredEnv("DATABASE_URL must point at PostgreSQL (postgresql://...)")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("PORTAL_STATIC_ROOT", str(BASE_DIR / ".staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("PORTAL_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "endpoints.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "endpoints.api.errors.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Inference Portal API",
    "DESCRIPTION": "Self-service OpenAI-compatible LLM endpoints on your GPU clusters.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: Redis is the broker. Tasks are acknowledged late so a killed worker's task is redelivered.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:56379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=30)
}
# Celery's Django fixup closes every database connection before and after each task unless this
# is set (it then closes them every 2 × this many tasks). Tasks keep their connections as web
# requests do, under CONN_MAX_AGE: see portal/celery.py.
CELERY_DB_REUSE_MAX = 1000

# The host cluster the workers talk to first; empty means in-cluster configuration.
KUBECONFIG = env_str("KUBECONFIG", "")
PROMETHEUS_URL = env_str("PROMETHEUS_URL", "")

# Tenant clusters: the vCluster chart (a directory or an OCI/repo reference helm understands),
# installed as release <tenant> into host namespace t-<tenant>.
PORTAL_VCLUSTER_CHART = env_str("PORTAL_VCLUSTER_CHART", "")
PORTAL_VCLUSTER_CHART_VERSION = env_str("PORTAL_VCLUSTER_CHART_VERSION", "")
PORTAL_HELM_BIN = env_str("PORTAL_HELM_BIN", "helm")
# The ClusterRole the worker binds to itself in each tenant namespace it creates (deploy/helm RBAC);
# empty where the worker's identity already holds those rights (the local platform's admin).
PORTAL_TENANT_CLUSTERROLE = env_str("PORTAL_TENANT_CLUSTERROLE", "")
PORTAL_NAMESPACE = env_str("PORTAL_NAMESPACE", "")
PORTAL_SERVICE_ACCOUNT = env_str("PORTAL_SERVICE_ACCOUNT", "")
PORTAL_TENANT_CLUSTER_TIMEOUT = env_int("PORTAL_TENANT_CLUSTER_TIMEOUT", 300, minimum=10)
# A worker that claimed a tenant cluster's install and then went silent this long is presumed dead.
PORTAL_CLAIM_STALE_SECONDS = env_int("PORTAL_CLAIM_STALE_SECONDS", 420, minimum=5)

# A Hugging Face token for gated models, put into each tenant namespace's Secret hf-token (the
# Deployment reads it by secretKeyRef, never inline). Give it as PORTAL_HF_TOKEN_FILE in production.
PORTAL_HF_TOKEN = env_str("PORTAL_HF_TOKEN", "")

# The shared Gateway that endpoint routes attach to, and the domain their hostnames live under.
PORTAL_GATEWAY_NAME = env_str("PORTAL_GATEWAY_NAME", "shared-inference")
PORTAL_GATEWAY_NAMESPACE = env_str("PORTAL_GATEWAY_NAMESPACE", "shared-gateways")
PORTAL_GATEWAY_DOMAIN = env_str("PORTAL_GATEWAY_DOMAIN", "inference.localhost")
# An endpoint's public URL, from its hostname (scheme and port are the gateway's).
PORTAL_ENDPOINT_URL_TEMPLATE = env_str("PORTAL_ENDPOINT_URL_TEMPLATE", "https://{host}")
if "{host}" not in PORTAL_ENDPOINT_URL_TEMPLATE:
    from .env import ImproperlyConfiguredEnv

    raise ImproperlyConfiguredEnv("PORTAL_ENDPOINT_URL_TEMPLATE must contain {host}, e.g. https://{host}")
# Where the portal itself reaches the gateway for the first-request gate, sending the endpoint's
# hostname in the Host header; empty means the public URL.
PORTAL_GATEWAY_URL = env_str("PORTAL_GATEWAY_URL", "")
PORTAL_GATEWAY_CONTROLLER = env_str("PORTAL_GATEWAY_CONTROLLER", "")
# Before an endpoint is called Ready, send a real completion through the gateway (issue 6).
PORTAL_VERIFY_FIRST_REQUEST = env_bool("PORTAL_VERIFY_FIRST_REQUEST", True)

# The local platform plays GPU pods with KWOK and the vLLM emulator; these annotations tell it how.
PORTAL_EMULATE = env_bool("PORTAL_EMULATE", False)
PORTAL_EMULATED_LOAD_SECONDS = env_int("PORTAL_EMULATED_LOAD_SECONDS", 5, minimum=0, maximum=3600)

# Reconcile (Celery beat) period, and how long lost work waits before it is picked up again.
PORTAL_RECONCILE_SECONDS = env_int("PORTAL_RECONCILE_SECONDS", 30, minimum=5)
PORTAL_LOST_WORK_SECONDS = env_int("PORTAL_LOST_WORK_SECONDS", 60, minimum=5)

CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "workers.tasks.reconcile", "schedule": float(PORTAL_RECONCILE_SECONDS)},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("PORTAL_LOG_LEVEL", "INFO")},
}
