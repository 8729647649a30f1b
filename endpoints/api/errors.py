"""One JSON shape for every API error:

    {"error": {"code": "invalid", "message": "name must be at most 40 characters (got 45)",
               "fields": {"name": ["must be at most 40 characters (got 45)"]}}}

``code`` is stable and machine-readable; ``message`` is one line for a person; ``fields`` names
each input at fault (dotted for nested input, e.g. ``tier_gpus.h100-80gb``). Some errors add
``details`` (quota numbers, capacity numbers).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from endpoints.exceptions import DomainError, ValidationFailed, summarise


def error_body(code: str, message: str, fields: dict | None = None, details: dict | None = None) -> dict:
    body: dict[str, Any] = {"code": code, "message": message, "fields": fields or {}}
    if details:
        body["details"] = details
    return {"error": body}


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as {"dotted.field": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for field, messages in flatten(value, name).items():
                out.setdefault(field, []).extend(messages)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                for field, messages in flatten(value, f"{prefix}.{index}" if prefix else str(index)).items():
                    out.setdefault(field, []).extend(messages)
            else:
                out.setdefault(prefix or "non_field_errors", []).append(str(value))
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return {field: _without_shorter_duplicates(messages) for field, messages in out.items()}


def _without_shorter_duplicates(messages: list[str]) -> list[str]:
    # A length check may fire twice (the field's max_length and a name validator); keep the
    # message that says more: "must be at most 40 characters (got 45)".
    return [m for m in messages if not any(o != m and o.startswith(m) for o in messages)]


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = ValidationFailed.from_django(exc)
    if isinstance(exc, DomainError):
        set_rollback()
        return Response(error_body(exc.code, exc.message, exc.fields, exc.details), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("not found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: let Django answer 500 and log it
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    set_rollback()
    if isinstance(exc, exceptions.ValidationError):
        fields = flatten(exc.detail)
        body = error_body("invalid", summarise(fields), fields)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        body = error_body(code, str(exc.detail))
    return Response(body, status=exc.status_code, headers=headers)


def _api_path(request) -> bool:
    return request.path.startswith("/api/")


def not_found(request, exception=None):
    """handler404: the JSON error shape under /api/, Django's page elsewhere."""
    if _api_path(request):
        return JsonResponse(error_body("not_found", f"no such resource: {request.path[:200]}"), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """handler500: the JSON error shape under /api/, Django's page elsewhere."""
    if _api_path(request):
        return JsonResponse(
            error_body("server_error", "something went wrong on our side; it has been logged"), status=500
        )
    return defaults.server_error(request)
