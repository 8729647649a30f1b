"""Liveness for probes and `make demo`: answers without touching the database, so a database
outage shows up in the app's pages and logs rather than as a restart loop."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache


@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
