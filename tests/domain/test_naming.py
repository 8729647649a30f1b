from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from endpoints import naming
from endpoints.validators import validate_endpoint_name, validate_tenant_slug


class _Tenant:
    def __init__(self, slug: str) -> None:
        self.slug = slug


class _Endpoint:
    def __init__(self, name: str, tenant: str) -> None:
        self.name = name
        self.tenant = _Tenant(tenant)


def test_the_names_the_workers_build_follow_the_documented_layout() -> None:
    endpoint = _Endpoint("chat", "acme")
    assert naming.namespace_for(endpoint.tenant) == "t-acme"
    assert naming.object_name(endpoint) == "ep-chat"
    assert naming.hostname(endpoint, "inference.localhost") == "chat-acme.inference.localhost"


def test_the_longest_allowed_names_still_fit_kubernetes_limits_once_prefixed() -> None:
    name = "a" * naming.MAX_ENDPOINT_NAME_LENGTH
    slug = "b" * naming.MAX_TENANT_SLUG_LENGTH
    validate_endpoint_name(name)
    validate_tenant_slug(slug)
    # Deployment ep-<name> → ReplicaSet ep-<name>-<10-char hash> → pod ...-<5 chars>
    pod = f"{naming.object_name(name)}-{'h' * 10}-{'p' * 5}"
    assert len(pod) <= 63
    assert len(naming.hostname(_Endpoint(name, slug), "x.example").split(".")[0]) <= 63
    assert len(naming.namespace_for(slug)) <= 63


def test_it_rejects_an_endpoint_name_one_character_too_long_and_says_the_limit() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_endpoint_name("a" * (naming.MAX_ENDPOINT_NAME_LENGTH + 1))
    assert caught.value.messages == ["must be at most 40 characters (got 41)"]


@pytest.mark.parametrize("bad", ["Chat", "1chat", "chat-", "-chat", "ch_at", "chat.v1", ""])
def test_it_rejects_names_that_are_not_dns_labels(bad: str) -> None:
    with pytest.raises(ValidationError, match="DNS label"):
        validate_endpoint_name(bad)


def test_tenant_slugs_have_no_hyphen_so_hostnames_cannot_collide() -> None:
    with pytest.raises(ValidationError, match="no '-'"):
        validate_tenant_slug("big-corp")
    # "a-b" in tenant "c" and "a" in tenant "bc": the tenant is always after the last hyphen.
    first = naming.hostname(_Endpoint("a-b", "c"), "d")
    second = naming.hostname(_Endpoint("a", "bc"), "d")
    assert first != second
    assert first.split(".")[0].rsplit("-", 1) == ["a-b", "c"]


def test_a_name_that_skipped_validation_is_refused_by_the_builders() -> None:
    with pytest.raises(ValueError, match="not a DNS label"):
        naming.object_name("Bad_Name")
