"""Sign-in, sign-out (POST only) and CSRF on the pages' forms."""

from __future__ import annotations

import pytest
from django.test import Client

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def test_the_sign_in_page_renders_without_external_links(client, world):
    response = client.get("/login/")
    assert response.status_code == 200
    html = text(response)
    assert 'name="username"' in html and 'autocomplete="current-password"' in html
    no_external_links(html)


def test_a_person_signs_in_and_lands_on_their_tenant(client, world):
    response = client.post("/login/", {"username": "bob", "password": "pw-not-secret"}, follow=True)
    assert response.status_code == 200
    assert ">chat<" in text(response)


def test_a_wrong_password_says_so(client, world):
    response = client.post("/login/", {"username": "bob", "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in text(response)


def test_sign_out_is_a_post(signed_in, world):
    c = signed_in(world.bob)
    assert c.get("/logout/").status_code == 405
    assert c.post("/logout/").status_code == 302
    assert c.get("/").status_code == 302


def test_forms_refuse_a_post_without_the_csrf_token(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world.bob)
    response = c.post(
        "/endpoints/new/", {"template": "llama-h100", "name": "nocsrf", "min_replicas": 1, "max_replicas": 1}
    )
    assert response.status_code == 403
    page = c.get("/endpoints/new/")
    token = page.cookies["csrftoken"].value
    response = c.post(
        "/endpoints/new/",
        {
            "template": "llama-h100",
            "name": "withcsrf",
            "min_replicas": 1,
            "max_replicas": 1,
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 302


def test_another_tenants_endpoint_is_not_found_even_after_signing_in(client, world):
    client.post("/login/", {"username": "grace", "password": "pw-not-secret"})
    assert client.get(f"/endpoints/{world.acme_endpoint.pk}/").status_code == 404
