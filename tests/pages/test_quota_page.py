"""Quota page: usage, open requests, and a form to ask for more with a reason."""

from __future__ import annotations

import pytest

from endpoints import actions
from endpoints.models import QuotaRequest

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def test_it_shows_usage_and_open_requests(world, signed_in):
    actions.request_quota(world.alice, world.acme, reason="launch week", tier_gpus={"h100": 16})
    html = text(signed_in(world.carol).get("/quota/"))
    assert "GPUs on h100" in html and "launch week" in html and "Pending" in html
    assert "Viewers cannot ask for quota" in html
    no_external_links(html)


def test_a_member_asks_for_more_with_a_reason(world, signed_in):
    response = signed_in(world.bob).post(
        "/quota/", {"tier__h100": "16", "gpus_total": "16", "reason": "a second model for support"}
    )
    assert response.status_code == 302
    request = QuotaRequest.objects.get(tenant=world.acme)
    assert (
        request.tier_gpus == {"h100": 16} and request.gpus_total == 16 and request.requested_by == world.bob
    )


def test_a_request_without_a_reason_is_refused_next_to_the_field(world, signed_in):
    html = text(signed_in(world.bob).post("/quota/", {"gpus_total": "16", "reason": ""}))
    assert 'id="id_reason-errors"' in html and "Say what the quota is for." in html
    assert not QuotaRequest.objects.exists()


def test_a_request_asking_for_nothing_says_so(world, signed_in):
    html = text(signed_in(world.bob).post("/quota/", {"reason": "more please"}))
    assert "Ask for at least one limit" in html
    assert not QuotaRequest.objects.exists()


def test_viewers_cannot_ask_for_quota(world, signed_in):
    response = signed_in(world.carol).post("/quota/", {"gpus_total": "16", "reason": "please"})
    assert response.status_code == 403
    assert not QuotaRequest.objects.exists()


def test_the_over_quota_link_prefills_nothing_it_should_not(world, signed_in):
    html = text(signed_in(world.bob).get("/quota/?tier__h100=12&gpus_total=abc"))
    assert 'name="tier__h100" value="12"' in html and 'name="gpus_total" value="abc"' not in html


def test_another_tenants_quota_requests_stay_hidden(world, signed_in):
    actions.request_quota(world.grace, world.globex, reason="globex secret plans", gpus_total=32)
    assert "globex secret plans" not in text(signed_in(world.alice).get("/quota/"))
    assert signed_in(world.alice).get(f"/endpoints/{world.globex_endpoint.pk}/").status_code == 404
