"""Request form: live preview, field errors next to their fields, over-quota error."""

from __future__ import annotations

import re

import pytest

from endpoints.models import Endpoint

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def field_errors(html: str, field: str) -> str:
    """The error list rendered right after FIELD's input (empty when there is none)."""
    match = re.search(rf'id="id_{field}-errors">(.*?)</ul>', html, re.S)
    return match.group(1) if match else ""


def test_the_form_renders_with_a_preview(world, signed_in):
    response = signed_in(world.bob).get("/endpoints/new/?template=llama-h100")
    html = text(response)
    assert response.status_code == 200
    assert 'hx-get="/endpoints/new/preview/"' in html and "delay:400ms" in html
    assert "Quota after this request" in html and "Monthly cost" in html
    no_external_links(html)


def test_the_preview_shows_fit_quota_after_and_cost(world, signed_in):
    response = signed_in(world.bob).get(
        "/endpoints/new/preview/",
        {"template": "llama-h100", "name": "x", "min_replicas": 1, "max_replicas": 3},
    )
    html = text(response)
    assert "concurrent 4k-token chats per replica" in html
    # acme uses 1 GPU (its endpoint "chat"); 3 more asked of 8.
    assert "1 + <strong>3</strong> of 8" in html
    assert "$2,920" in html and "$8,760" in html  # 4.00/h × 730 h × 1 and × 3


def test_the_preview_warns_before_going_over_quota(world, signed_in):
    html = text(
        signed_in(world.bob).get(
            "/endpoints/new/preview/", {"template": "llama-h100", "min_replicas": 1, "max_replicas": 8}
        )
    )
    assert "Over quota" in html and "/quota/" in html


def test_a_request_creates_the_endpoint_and_goes_to_its_page(
    world, signed_in, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(world.bob).post(
            "/endpoints/new/",
            {"template": "llama-h100", "name": "support-bot", "min_replicas": 1, "max_replicas": 2},
        )
    endpoint = Endpoint.objects.get(tenant=world.acme, name="support-bot")
    assert response.status_code == 302 and response["Location"] == f"/endpoints/{endpoint.pk}/"
    assert ("workers.tasks.deploy_endpoint", endpoint.pk) in sent_tasks


def test_errors_show_next_to_their_fields(world, signed_in):
    response = signed_in(world.bob).post(
        "/endpoints/new/",
        {"template": "llama-h100", "name": "Bad_Name", "min_replicas": 1, "max_replicas": 99},
    )
    html = text(response)
    assert response.status_code == 200
    assert "DNS label" in field_errors(html, "name")
    assert "at most 64" in field_errors(html, "max_replicas")
    assert not Endpoint.objects.filter(name="Bad_Name").exists()


def test_domain_errors_land_on_their_field(world, signed_in):
    response = signed_in(world.bob).post(
        "/endpoints/new/", {"template": "llama-h100", "name": "chat", "min_replicas": 1, "max_replicas": 1}
    )
    assert "Name is taken" in field_errors(text(response), "name")
    response = signed_in(world.bob).post(
        "/endpoints/new/", {"template": "llama-h100", "name": "wide", "min_replicas": 1, "max_replicas": 9}
    )
    assert "between 1 and 8 for template llama-h100" in field_errors(text(response), "max_replicas")


def test_an_over_quota_request_says_used_requested_and_limit(world, signed_in):
    response = signed_in(world.bob).post(
        "/endpoints/new/", {"template": "llama-h100", "name": "big", "min_replicas": 1, "max_replicas": 8}
    )
    html = text(response)
    assert 'id="over-quota"' in html
    assert "GPUs on h100: 1 used + 8 requested = 9, limit 8" in html
    assert 'href="/quota/"' in html
    assert "Max replicas would go over the tenant&#x27;s quota" in field_errors(html, "max_replicas")
    assert not Endpoint.objects.filter(name="big").exists()


def test_viewers_cannot_request_endpoints(world, signed_in):
    response = signed_in(world.carol).post(
        "/endpoints/new/", {"template": "llama-h100", "name": "sneaky", "min_replicas": 1, "max_replicas": 1}
    )
    assert response.status_code == 403
    assert not Endpoint.objects.filter(name="sneaky").exists()


def test_another_tenants_template_is_not_a_choice(world, signed_in):
    response = signed_in(world.alice).post(
        "/endpoints/new/", {"template": "secret-h100", "name": "x", "min_replicas": 1, "max_replicas": 1}
    )
    assert "Pick one of the templates" in field_errors(text(response), "template")


def test_another_tenants_endpoint_answers_404(world, signed_in):
    assert signed_in(world.bob).get(f"/endpoints/{world.globex_endpoint.pk}/metrics/").status_code == 404
