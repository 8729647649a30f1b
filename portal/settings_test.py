"""Settings for pytest: the real settings, with a throwaway secret key and a fast password hasher.

pytest-django reads settings before any conftest runs, so these defaults cannot live in conftest.
"""

from __future__ import annotations

import os

os.environ.setdefault("PORTAL_SECRET_KEY", "test-only-not-secret")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve static files from the apps' directories as they are: tests do not run collectstatic.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True

# Tests use their own Redis database, so a running demo's queue is never touched.
# Celery reads the CELERY_BROKER_URL environment variable before its configuration, so set both.
if CELERY_BROKER_URL.startswith("redis://"):  # noqa: F405
    CELERY_BROKER_URL = CELERY_BROKER_URL.rsplit("/", 1)[0] + "/7"  # noqa: F405
    os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
