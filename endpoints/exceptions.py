"""Errors the actions raise. Each carries a stable code, a plain message and, where one field is at
fault, that field's name, so the API, the pages and the admin can all say what went wrong."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError


class DomainError(Exception):
    """Base class: a request the portal refuses, with the reason in words."""

    code = "invalid"
    status = 400

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.details = details or {}

    @classmethod
    def for_field(cls, field: str, message: str, **kwargs: Any) -> DomainError:
        """An error about one field: 'FIELD MESSAGE' at the top, MESSAGE under the field."""
        return cls(f"{field} {message}", fields={field: [message]}, **kwargs)


class ValidationFailed(DomainError):
    code = "invalid"
    status = 400

    @classmethod
    def from_django(cls, exc: DjangoValidationError) -> ValidationFailed:
        """Turn a model's full_clean() error into ours, keeping the field names."""
        if hasattr(exc, "error_dict"):
            fields = {name: [str(m) for m in msgs] for name, msgs in exc.message_dict.items()}
        else:
            fields = {"non_field_errors": [str(m) for m in exc.messages]}
        return cls(summarise(fields), fields=fields)


class NotAllowed(DomainError):
    code = "permission_denied"
    status = 403


class Conflict(DomainError):
    code = "conflict"
    status = 409


class IllegalTransition(Conflict):
    code = "illegal_transition"


class QuotaExceeded(Conflict):
    code = "quota_exceeded"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 422


def summarise(fields: dict[str, list[str]]) -> str:
    """One line naming the first field at fault, e.g. 'name must be at most 40 characters'."""
    for name, messages in fields.items():
        if messages:
            if name in ("non_field_errors", "__all__"):
                return messages[0]
            return f"{name} {messages[0]}" if messages[0][:1].islower() else f"{name}: {messages[0]}"
    return "Invalid input."
