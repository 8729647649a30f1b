"""Tenant home: endpoints, quota bars, recent events; scoped to the current tenant."""

from __future__ import annotations

import pytest

from endpoints.models import Endpoint

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def test_it_shows_the_tenants_endpoints_quota_and_events(world, signed_in):
    response = signed_in(world.bob).get("/")
    assert response.status_code == 200
    html = text(response)
    assert "chat" in html and "gchat" not in html  # globex's endpoint is not on acme's home
    assert "GPUs on h100" in html and "of 8" in html
    assert "Requested" in html  # the phase badge and the timeline event
    no_external_links(html)


def test_a_visitor_who_is_not_signed_in_goes_to_the_sign_in_page(client, world):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_another_tenants_endpoint_url_answers_404(world, signed_in):
    assert signed_in(world.alice).get(f"/endpoints/{world.globex_endpoint.pk}/").status_code == 404


def test_a_member_of_two_tenants_switches_between_them(world, signed_in):
    c = signed_in(world.dual)
    assert ">chat<" in text(c.get("/"))
    response = c.post("/tenant/", {"tenant": "globex", "next": "/"})
    assert response.status_code == 302
    html = text(c.get("/"))
    assert "gchat" in html and ">chat<" not in html


def test_the_switcher_refuses_a_tenant_the_user_is_not_in(world, signed_in):
    c = signed_in(world.alice)
    assert c.post("/tenant/", {"tenant": "globex"}).status_code == 404
    assert "gchat" not in text(c.get("/"))


def test_a_stale_tenant_in_the_session_is_not_trusted(world, signed_in):
    c = signed_in(world.alice)
    session = c.session
    session["portal.tenant"] = "globex"
    session.save()
    html = text(c.get("/"))
    assert "gchat" not in html and "chat" in html


def test_home_keeps_its_query_count_with_many_endpoints(world, signed_in, django_assert_max_num_queries):
    c = signed_in(world.alice)
    c.get("/")  # session and first-request setup out of the way
    with django_assert_max_num_queries(14) as small:
        assert c.get("/").status_code == 200
    Endpoint.objects.bulk_create(
        [
            Endpoint(
                tenant=world.acme, template=world.template, name=f"bulk-{i}", min_replicas=1, max_replicas=1
            )
            for i in range(60)
        ]
    )
    with django_assert_max_num_queries(len(small.captured_queries)):
        html = text(c.get("/"))
    assert "Page 1 of 3" in html
