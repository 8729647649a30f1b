"""Catalog: the templates open to the current tenant, with model facts, fit, cold start and price."""

from __future__ import annotations

import pytest

from tests.factories import make_model, make_template

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def test_it_shows_open_templates_with_their_facts(world, signed_in):
    html = text(signed_in(world.carol).get("/catalog/"))
    assert "Llama-3.1-8B" in html and "llama-h100" in html
    assert "llama3.1" in html  # licence
    assert "8192 tokens" in html  # context
    assert "concurrent 4k-token chats" in html
    assert "Cold start about" in html
    assert "$4.00 per hour" in html
    no_external_links(html)


def test_restricted_templates_show_only_to_their_tenants(world, signed_in):
    assert "secret-h100" not in text(signed_in(world.alice).get("/catalog/"))
    assert "secret-h100" in text(signed_in(world.grace).get("/catalog/"))


def test_templates_of_unapproved_models_stay_out(world, signed_in):
    pending = make_model(name="Pending-Model", approved=False)
    assert pending.status == "requested"
    html = text(signed_in(world.alice).get("/catalog/"))
    assert "Pending-Model" not in html


def test_viewers_see_the_catalog_without_request_buttons(world, signed_in):
    assert "Request an endpoint" not in text(signed_in(world.carol).get("/catalog/"))
    assert "Request an endpoint" in text(signed_in(world.bob).get("/catalog/"))


def test_another_tenants_endpoint_answers_404(world, signed_in):
    assert signed_in(world.bob).get(f"/endpoints/{world.globex_endpoint.pk}/status/").status_code == 404


def test_a_template_on_a_small_context_counts_chats_of_its_length(world, signed_in):
    make_template(name="short-ctx", tier=world.tier, max_model_len=2048)
    assert "concurrent 2048-token chats" in text(signed_in(world.bob).get("/catalog/"))
