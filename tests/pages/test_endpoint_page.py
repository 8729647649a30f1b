"""Endpoint page: live status, timeline, route conditions, problems, snippets, keys, scale and
delete with a confirmation, viewers read-only; and a bounded number of queries."""

from __future__ import annotations

from unittest import mock

import pytest

from endpoints import actions
from endpoints.choices import EndpointPhase as P
from endpoints.models import Endpoint, EndpointEvent, EndpointKey
from tests.factories import make_endpoint

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


def advance(endpoint: Endpoint, *phases: str) -> Endpoint:
    for new in phases:
        actions.transition_endpoint(endpoint.pk, expected=Endpoint.objects.get(pk=endpoint.pk).phase, new=new)
    return Endpoint.objects.get(pk=endpoint.pk)


def test_a_starting_endpoint_polls_its_status_with_a_progress_bar(world, signed_in):
    ep = advance(world.acme_endpoint, P.PROVISIONING_TENANT, P.SCHEDULING, P.PULLING, P.DOWNLOADING_WEIGHTS)
    actions.record_observation(ep.pk, load_progress=50)  # halfway through 30..70
    html = text(signed_in(world.bob).get(f"/endpoints/{ep.pk}/"))
    assert 'hx-trigger="every 2s"' in html and f'hx-get="/endpoints/{ep.pk}/status/?url=' in html
    assert 'id="stage-progress"' in html and 'aria-valuenow="50"' in html
    assert "Weight download" in html and "stage-active" in html
    no_external_links(html)


def test_the_status_partial_stops_polling_once_ready(world, signed_in):
    ep = advance(world.acme_endpoint, P.SCHEDULING, P.READY)
    partial = text(signed_in(world.bob).get(f"/endpoints/{ep.pk}/status/", HTTP_HX_REQUEST="true"))
    assert "every 2s" not in partial and "Ready" in partial
    assert "<html" not in partial


def test_the_status_partial_swaps_the_snippets_in_when_the_url_appears(world, signed_in):
    ep = world.acme_endpoint
    c = signed_in(world.bob)
    assert 'id="connect"' not in text(c.get(f"/endpoints/{ep.pk}/status/", {"url": ""}))
    actions.record_observation(ep.pk, url="http://chat-acme.inference.localhost:58080")
    partial = text(c.get(f"/endpoints/{ep.pk}/status/", {"url": ""}))
    assert 'hx-swap-oob="true"' in partial and "http://chat-acme.inference.localhost:58080/v1" in partial


def test_route_conditions_and_problems_show_reason_message_and_fix(world, signed_in):
    ep = advance(
        world.acme_endpoint, P.SCHEDULING, P.PULLING, P.DOWNLOADING_WEIGHTS, P.LOADING_MODEL, P.VERIFYING
    )
    actions.set_endpoint_condition(ep.pk, "RouteAccepted", "True", "Accepted", "Accepted by shared-inference")
    actions.set_endpoint_condition(
        ep.pk, "RouteResolvedRefs", "False", "BackendNotFound", "Service t-acme/ep-chat not found"
    )
    Endpoint.objects.filter(pk=ep.pk).update(
        phase_reason="RouteBackend",
        phase_message="The route's backend is not resolved (BackendNotFound). The portal restores missing "
        "Services on its next reconcile; if this persists, contact support.",
    )
    html = text(signed_in(world.carol).get(f"/endpoints/{ep.pk}/"))
    assert "BackendNotFound" in html and "Service t-acme/ep-chat not found" in html
    assert "Accepted by shared-inference" in html
    assert "RouteBackend" in html and "restores missing Services" in html


def test_a_failed_endpoint_shows_the_stage_it_failed_in_and_a_retry(world, signed_in):
    ep = advance(world.acme_endpoint, P.SCHEDULING, P.PULLING, P.DOWNLOADING_WEIGHTS, P.LOADING_MODEL)
    actions.transition_endpoint(
        ep.pk,
        expected=P.LOADING_MODEL,
        new=P.FAILED,
        reason="CudaOom",
        message="The model ran out of GPU memory while loading (CUDA out of memory). Lower the max model length.",
    )
    html = text(signed_in(world.bob).get(f"/endpoints/{ep.pk}/"))
    assert "stage-failed" in html and "CUDA out of memory" in html and "Lower the max model length" in html
    assert "Try again" in html


def test_snippets_use_the_url_and_a_placeholder_key(world, signed_in):
    actions.record_observation(world.acme_endpoint.pk, url="http://chat-acme.inference.localhost:58080")
    html = text(signed_in(world.bob).get(f"/endpoints/{world.acme_endpoint.pk}/"))
    assert "curl http://chat-acme.inference.localhost:58080/v1/chat/completions" in html
    assert 'base_url="http://chat-acme.inference.localhost:58080/v1"' in html
    assert "$INFERENCE_KEY" in html and 'data-copy="#code-py"' in html
    no_external_links(html, allowed=("http://chat-acme.inference.localhost:58080",))


def test_a_key_is_shown_once_and_only_its_hash_is_kept(world, signed_in):
    c = signed_in(world.bob)
    response = c.post(f"/endpoints/{world.acme_endpoint.pk}/keys/", {"name": "support-bot"})
    html = text(response)
    key = EndpointKey.objects.get(endpoint=world.acme_endpoint, name="support-bot")
    raw = html.split('id="new-key-value">', 1)[1].split("<", 1)[0]
    assert raw.startswith(key.display_prefix) and EndpointKey.hash(raw) == key.key_hash
    assert response["Cache-Control"] == "no-store"
    assert raw not in text(c.get(f"/endpoints/{world.acme_endpoint.pk}/"))


def test_a_key_name_error_shows_next_to_the_field(world, signed_in):
    html = text(signed_in(world.bob).post(f"/endpoints/{world.acme_endpoint.pk}/keys/", {"name": ""}))
    assert 'id="id_name-errors"' in html and "This field is required." in html


def test_keys_are_revoked(world, signed_in):
    issued = actions.create_endpoint_key(None, world.acme_endpoint, name="old")
    response = signed_in(world.bob).post(f"/endpoints/{world.acme_endpoint.pk}/keys/{issued.key.pk}/revoke/")
    assert response.status_code == 302
    issued.key.refresh_from_db()
    assert issued.key.revoked_at is not None


def test_scaling_asks_for_confirmation_first(world, signed_in):
    c = signed_in(world.bob)
    url = f"/endpoints/{world.acme_endpoint.pk}/scale/"
    review = c.post(url, {"min_replicas": 1, "max_replicas": 3})
    assert review.status_code == 200 and "Scale to 1–3" in text(review)
    assert Endpoint.objects.get(pk=world.acme_endpoint.pk).max_replicas == 1
    done = c.post(url, {"min_replicas": 1, "max_replicas": 3, "confirm": "yes"})
    assert done.status_code == 302
    assert Endpoint.objects.get(pk=world.acme_endpoint.pk).max_replicas == 3


def test_scaling_past_the_quota_shows_the_error_on_the_page(world, signed_in):
    make_endpoint(world.acme, world.template, "other", max_replicas=4)
    response = signed_in(world.bob).post(
        f"/endpoints/{world.acme_endpoint.pk}/scale/",
        {"min_replicas": 1, "max_replicas": 8, "confirm": "yes"},
    )
    html = text(response)
    assert response.status_code == 400
    assert "Max replicas" in html and "would exceed the quota" in html


def test_deleting_asks_for_confirmation_first(world, signed_in):
    c = signed_in(world.bob)
    url = f"/endpoints/{world.acme_endpoint.pk}/delete/"
    assert "Delete chat?" in text(c.get(url))
    assert Endpoint.objects.get(pk=world.acme_endpoint.pk).phase == P.REQUESTED
    assert c.post(url).status_code == 302
    assert Endpoint.objects.get(pk=world.acme_endpoint.pk).phase == P.DELETING


def test_viewers_see_the_page_but_cannot_change_anything(world, signed_in):
    c = signed_in(world.carol)
    ep = world.acme_endpoint
    html = text(c.get(f"/endpoints/{ep.pk}/"))
    assert "Delete…" not in html and "Create key" not in html and "Review change" not in html
    assert (
        c.post(
            f"/endpoints/{ep.pk}/scale/", {"min_replicas": 1, "max_replicas": 2, "confirm": "yes"}
        ).status_code
        == 403
    )
    assert c.post(f"/endpoints/{ep.pk}/delete/").status_code == 403
    assert c.post(f"/endpoints/{ep.pk}/keys/", {"name": "mine"}).status_code == 403
    assert c.post(f"/endpoints/{ep.pk}/redeploy/").status_code == 403
    ep.refresh_from_db()
    assert ep.max_replicas == 1 and ep.phase == P.REQUESTED and not ep.keys.exists()


def test_another_tenants_endpoint_answers_404_on_every_url(world, signed_in):
    c = signed_in(world.alice)
    pk = world.globex_endpoint.pk
    for url in ("", "status/", "metrics/", "delete/"):
        assert c.get(f"/endpoints/{pk}/{url}").status_code == 404, url
    for url in ("scale/", "delete/", "keys/", "redeploy/"):
        assert (
            c.post(f"/endpoints/{pk}/{url}", {"name": "x", "min_replicas": 1, "max_replicas": 1}).status_code
            == 404
        )
    assert Endpoint.objects.get(pk=pk).phase == P.REQUESTED


def test_the_metrics_partial_shapes_the_dashboard_for_the_charts(world, signed_in):
    with mock.patch("endpoints.dashboards.settings") as settings:
        settings.PROMETHEUS_URL = ""
        body = (
            signed_in(world.bob)
            .get(f"/endpoints/{world.acme_endpoint.pk}/metrics/", {"window": "15m"})
            .json()
        )
    assert body["window"] == "15m" and body["status"] == "unconfigured" and "Prometheus" in body["message"]
    bad = signed_in(world.bob).get(f"/endpoints/{world.acme_endpoint.pk}/metrics/", {"window": "1y"})
    assert bad.status_code == 400


def test_the_endpoint_page_keeps_its_query_count(world, signed_in, django_assert_max_num_queries):
    ep = world.acme_endpoint
    c = signed_in(world.bob)
    c.get(f"/endpoints/{ep.pk}/")
    with django_assert_max_num_queries(10) as few:
        c.get(f"/endpoints/{ep.pk}/")
    for i in range(15):
        actions.create_endpoint_key(None, ep, name=f"k{i}")
    EndpointEvent.objects.bulk_create(
        [EndpointEvent(endpoint=ep, reason="Scheduled", message=f"tick {i}") for i in range(200)]
    )
    with django_assert_max_num_queries(len(few.captured_queries)):
        c.get(f"/endpoints/{ep.pk}/")
    with django_assert_max_num_queries(5):
        c.get(f"/endpoints/{ep.pk}/status/")
