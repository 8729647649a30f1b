"""Idempotency-Key on POST: a retried request gets the first response and changes nothing.

The first request with a key inserts an IdempotencyRecord and runs, in one transaction; a
concurrent request with the same key waits on the unique index until the first commits, then
replays its response. Only successful responses are remembered: after an error the client may
fix the request and retry with the same key. The same key with a different request (method,
path or body) is refused with 422. Keys are per user and forgotten after a day.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from endpoints.exceptions import IdempotencyKeyReused, ValidationFailed
from endpoints.models import IdempotencyRecord

HEADER = "Idempotency-Key"
TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def _fingerprint(request) -> str:
    data = request.data
    if hasattr(data, "lists"):  # a QueryDict from a form post
        data = dict(data.lists())
    body = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{request.method}\n{request.path}\n{body}".encode()).hexdigest()


def idempotent(handler: Callable | None = None, *, redact: tuple[str, ...] = ()) -> Callable:
    """Make a POST handler honour Idempotency-Key. Keys in REDACT are not stored (a replay
    answers them as null): a token's secret must never rest in the database."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(self, request, *args, **kwargs):
            key = request.headers.get(HEADER)
            if key is None:
                return func(self, request, *args, **kwargs)
            key = key.strip()
            if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
                raise ValidationFailed.for_field(
                    HEADER, f"must be 1 to {MAX_KEY_LENGTH} printable characters"
                )
            fingerprint = _fingerprint(request)
            with transaction.atomic():
                record = _claim(request, key, fingerprint)
                if record.response_status:
                    return _replay(record, fingerprint, key)
                response = func(self, request, *args, **kwargs)
                if not 200 <= response.status_code < 300:
                    transaction.set_rollback(True)  # forget the key: the retry should run again
                    return response
                body = json.loads(JSONRenderer().render(response.data) or b"null")
                if isinstance(body, dict):
                    body = {k: (None if k in redact else value) for k, value in body.items()}
                record.response_status = response.status_code
                record.response_body = body
                record.save(update_fields=["response_status", "response_body"])
                return response

        wrapper.idempotent = True  # type: ignore[attr-defined]
        return wrapper

    return decorate(handler) if handler is not None else decorate


def _claim(request, key: str, fingerprint: str) -> IdempotencyRecord:
    """Our new record (response_status 0), or the one an earlier request left."""
    for _ in range(2):
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(
                    user=request.user,
                    key=key,
                    method=request.method,
                    path=request.path[:2000],
                    request_hash=fingerprint,
                    response_status=0,
                )
        except IntegrityError:
            # Blocks until a concurrent first request with this key commits or rolls back.
            record = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
            if record is None:
                continue  # it rolled back: the key is free again
            if record.created < timezone.now() - TTL:
                record.delete()
                continue
            return record
    raise IdempotencyKeyReused(f"{HEADER} {key!r} is in use by another request; retry shortly")


def _replay(record: IdempotencyRecord, fingerprint: str, key: str) -> Response:
    if record.request_hash != fingerprint:
        raise IdempotencyKeyReused(
            f"{HEADER} {key!r} was already used for a different request ({record.method} {record.path}); "
            "use a new key for a new request",
            fields={HEADER: ["was already used with a different request"]},
        )
    return Response(
        record.response_body, status=record.response_status, headers={"Idempotent-Replayed": "true"}
    )
