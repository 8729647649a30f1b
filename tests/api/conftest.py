"""Two tenants with members of every role, a shared and a restricted template, one endpoint each."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from endpoints import actions
from endpoints.choices import Role
from endpoints.models import Endpoint, GpuTier, Template, Tenant
from tests.factories import (
    make_endpoint,
    make_model,
    make_template,
    make_tenant,
    make_tier,
    make_user,
    sent_tasks,  # noqa: F401  (autouse: no test sends to the real broker)
)


@dataclass
class World:
    tier: GpuTier
    template: Template
    restricted: Template  # only for globex
    acme: Tenant
    globex: Tenant
    alice: object  # acme owner
    bob: object  # acme member
    carol: object  # acme viewer
    grace: object  # globex owner
    dual: object  # member of both tenants
    staff: object
    acme_endpoint: Endpoint
    globex_endpoint: Endpoint


@pytest.fixture
def world(db) -> World:
    tier = make_tier(name="h100")
    make_tier(name="l40s", gpu_memory_gib=48, gpus_per_node=4)
    template = make_template(name="llama-h100", tier=tier, model=make_model(name="Llama-3.1-8B"))
    restricted = make_template(name="secret-h100", tier=tier, tenant_restricted=True)
    quota = {"gpus_total": 8, "tier_gpus": {"h100": 8}, "max_endpoints": 5, "max_replicas": 16}
    alice, bob, carol, grace, dual = (make_user(n) for n in ("alice", "bob", "carol", "grace", "dual"))
    acme = make_tenant("acme", quota=quota, members={alice: Role.OWNER, bob: Role.MEMBER, carol: Role.VIEWER})
    globex = make_tenant("globex", quota=quota, members={grace: Role.OWNER})
    actions.add_member(None, acme, dual, Role.MEMBER)
    actions.add_member(None, globex, dual, Role.MEMBER)
    restricted.allowed_tenants.add(globex)
    return World(
        tier=tier,
        template=template,
        restricted=restricted,
        acme=acme,
        globex=globex,
        alice=alice,
        bob=bob,
        carol=carol,
        grace=grace,
        dual=dual,
        staff=make_user("root", staff=True),
        acme_endpoint=make_endpoint(acme, template, "chat"),
        globex_endpoint=make_endpoint(globex, template, "gchat"),
    )


@pytest.fixture
def as_user():
    """A client signed in as USER (session-style; token auth has its own tests)."""

    def client(user) -> APIClient:
        api = APIClient()
        api.force_authenticate(user)
        return api

    return client


def error(response) -> dict:
    """The error object of an API error response, after checking its shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "fields"} <= set(body["error"]), body
    return body["error"]
