from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints import actions
from endpoints.exceptions import NotAllowed, ValidationFailed
from endpoints.models import ApiToken, AuditEvent
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_a_token_is_stored_only_as_a_sha256_hash_and_never_in_the_audit_log() -> None:
    user = make_user()
    issued = actions.issue_api_token(user, user, name="ci")
    assert issued.secret.startswith(f"ipt_{issued.token.prefix}_")
    assert len(issued.secret) > 50
    row = ApiToken.objects.get(pk=issued.token.pk)
    assert row.secret_hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    secret_part = issued.secret.split("_", 2)[2]
    stored = json.dumps(list(ApiToken.objects.values()), default=str) + json.dumps(
        list(AuditEvent.objects.values("before", "after")), default=str
    )
    assert secret_part not in stored


def test_a_token_authenticates_until_revoked_or_expired() -> None:
    user = make_user()
    issued = actions.issue_api_token(user, user, name="ci")
    assert ApiToken.objects.authenticate(issued.secret).user == user
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at is not None
    actions.revoke_api_token(user, issued.token)
    assert ApiToken.objects.authenticate(issued.secret) is None

    soon = actions.issue_api_token(
        user, user, name="short", expires_at=timezone.now() + timedelta(seconds=60)
    )
    assert ApiToken.objects.authenticate(soon.secret) is not None
    ApiToken.objects.filter(pk=soon.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ApiToken.objects.authenticate(soon.secret) is None


def test_a_token_in_use_is_marked_used_at_most_once_a_minute(django_assert_num_queries) -> None:
    user = make_user()
    issued = actions.issue_api_token(user, user, name="ci")
    with django_assert_num_queries(2):  # the token, and marking it used
        ApiToken.objects.authenticate(issued.secret)
    first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    with django_assert_num_queries(1):  # the token only: no write, not even one that changes nothing
        ApiToken.objects.authenticate(issued.secret)
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first
    ApiToken.objects.filter(pk=issued.token.pk).update(last_used_at=first - timedelta(minutes=2))
    ApiToken.objects.authenticate(issued.secret)
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at > first


@pytest.mark.parametrize("raw", ["", "ipt_", "ipt_deadbeef_", "xyz_deadbeef_abc", "ipt_deadbeef_wrong"])
def test_garbage_and_wrong_secrets_do_not_authenticate(raw: str) -> None:
    user = make_user()
    issued = actions.issue_api_token(user, user, name="ci")
    assert ApiToken.objects.authenticate(raw) is None
    assert ApiToken.objects.authenticate(issued.secret[:-1] + "x") is None


def test_a_deactivated_user_s_tokens_stop_working() -> None:
    user = make_user()
    issued = actions.issue_api_token(user, user, name="ci")
    user.is_active = False
    user.save()
    assert ApiToken.objects.authenticate(issued.secret) is None


def test_people_issue_and_revoke_only_their_own_tokens() -> None:
    alice, bob = make_user(), make_user()
    with pytest.raises(NotAllowed):
        actions.issue_api_token(alice, bob, name="x")
    issued = actions.issue_api_token(bob, bob, name="x")
    with pytest.raises(NotAllowed):
        actions.revoke_api_token(alice, issued.token)


def test_token_names_are_required_and_bounded() -> None:
    user = make_user()
    with pytest.raises(ValidationFailed, match="name is required"):
        actions.issue_api_token(user, user, name=" ")
    with pytest.raises(ValidationFailed, match="name must be at most 64 characters"):
        actions.issue_api_token(user, user, name="x" * 65)
