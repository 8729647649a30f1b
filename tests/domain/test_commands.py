from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from endpoints.choices import ModelStatus
from endpoints.models import ApiToken, GpuTier, Membership, Model, Quota, Template, Tenant
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_seed_demo_loads_tiers_models_templates_tenants_and_prints_the_logins() -> None:
    out, _ = run("seed_demo")
    assert set(GpuTier.objects.values_list("name", flat=True)) == {
        "h100-80gb",
        "l40s-48gb",
        "a100-mig-1g10gb",
    }
    assert Model.objects.filter(status=ModelStatus.APPROVED).count() == 5
    llama = Model.objects.get(name="Llama-3.1-8B-Instruct")
    assert (llama.num_layers, llama.num_kv_heads, llama.head_dim, llama.max_context) == (32, 8, 128, 131_072)
    assert len(llama.revision) == 40
    assert all(t.fit().fits for t in Template.objects.all())
    assert Template.objects.count() == 5
    assert set(Tenant.objects.values_list("slug", flat=True)) == {"acme", "globex"}
    assert Quota.objects.get(tenant__slug="acme").tier_gpus == {"h100-80gb": 8, "l40s-48gb": 8}
    assert Membership.objects.filter(user__username="bob").count() == 2
    for username in ("admin", "alice", "bob", "carol", "grace"):
        assert username in out
    assert "(unchanged)" not in out


def test_seed_demo_is_idempotent() -> None:
    run("seed_demo")
    counts = [m.objects.count() for m in (GpuTier, Model, Template, Tenant, Membership)]
    out, _ = run("seed_demo")
    assert [m.objects.count() for m in (GpuTier, Model, Template, Tenant, Membership)] == counts
    assert "(unchanged)" in out


def test_issue_token_prints_a_working_token_once() -> None:
    make_user("alice")
    out, err = run("issue_token", "alice", "--name", "ci")
    token = out.strip()
    assert ApiToken.objects.authenticate(token).user.username == "alice"
    assert token not in err and "shown only now" in err
    assert ApiToken.objects.get().name == "ci"


def test_issue_token_refuses_an_unknown_user() -> None:
    with pytest.raises(CommandError, match="no active user named 'nobody'"):
        run("issue_token", "nobody")
