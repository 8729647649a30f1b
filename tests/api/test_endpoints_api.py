from __future__ import annotations

import pytest

from endpoints import actions, dispatch
from endpoints.choices import EndpointPhase
from endpoints.models import Endpoint, EndpointEvent
from tests.api.conftest import error

URL = "/api/v1/endpoints/"


def test_it_creates_an_endpoint_and_shows_its_fit_and_cost(
    world, as_user, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(world.bob).post(
            URL, {"name": "summarise", "template": "llama-h100", "max_replicas": 2}
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["tenant"], body["name"], body["phase"], body["min_replicas"], body["max_replicas"]) == (
        "acme",
        "summarise",
        "requested",
        1,
        2,
    )
    # 4.00 per GPU-hour × 1 GPU × 1 or 2 replicas × 730 h
    assert (body["cost"]["monthly_at_min_replicas"], body["cost"]["monthly_at_max_replicas"]) == (
        "2920.00",
        "5840.00",
    )
    assert body["cost"]["accrued"] == "0.00"
    assert body["capacity"]["fits"] and body["capacity"]["sequences_at_max_model_len"] == 55
    assert sent_tasks == [(dispatch.DEPLOY, body["id"])]
    # The response is built from the row as admitted, not read again: it must say what a read says.
    (listed,) = [e for e in as_user(world.bob).get(URL).json()["results"] if e["id"] == body["id"]]
    assert body == listed


def test_another_tenants_endpoint_answers_404_everywhere(world, as_user):
    bob = as_user(world.bob)
    other = world.globex_endpoint.pk
    for response in (
        bob.get(f"{URL}{other}/"),
        bob.get(f"{URL}{other}/events/"),
        bob.post(f"{URL}{other}/scale/", {"max_replicas": 2}),
        bob.delete(f"{URL}{other}/"),
    ):
        assert response.status_code == 404
        assert error(response)["code"] == "not_found"
    assert Endpoint.objects.get(pk=other).phase == EndpointPhase.REQUESTED
    assert [e["name"] for e in bob.get(URL).json()["results"]] == ["chat"]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"name": "a" * 41}, "name", "must be at most 40 characters (got 41)"),
        ({"name": "Chat_1"}, "name", "must be a DNS label"),
        ({"max_replicas": 65}, "max_replicas", "must be between 1 and 64"),
        ({"min_replicas": -1}, "min_replicas", "must be between 0 and 64"),
        ({"max_replicas": 9}, "max_replicas", "must be between 1 and 8 for template llama-h100 (got 9)"),
        ({"template": "secret-h100"}, "template", "names no template available to you: secret-h100"),
        ({"tenant": "globex"}, "tenant", "names no tenant of yours: globex"),
        ({"template": None}, "template", "must not be null"),
    ],
)
def test_bad_input_names_the_field_and_the_limit(world, as_user, payload, field, message):
    response = as_user(world.bob).post(
        URL, {"name": "ok", "template": "llama-h100", **payload}, format="json"
    )
    assert response.status_code == 400
    body = error(response)
    assert body["code"] == "invalid"
    assert body["fields"][field][0].startswith(message), body
    assert body["message"].startswith(field)
    assert not Endpoint.objects.filter(name="ok").exists()


def test_a_retried_create_with_the_same_idempotency_key_creates_one_endpoint(
    world, as_user, sent_tasks, django_capture_on_commit_callbacks
):
    bob = as_user(world.bob)
    payload = {"name": "retry", "template": "llama-h100"}
    with django_capture_on_commit_callbacks(execute=True):
        first = bob.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY="k-123")
        second = bob.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY="k-123")
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Endpoint.objects.filter(name="retry").count() == 1
    assert len(sent_tasks) == 1

    changed = bob.post(URL, {**payload, "max_replicas": 2}, format="json", HTTP_IDEMPOTENCY_KEY="k-123")
    assert changed.status_code == 422
    assert error(changed)["code"] == "idempotency_key_reused"


def test_a_failed_request_does_not_use_up_its_idempotency_key(world, as_user):
    bob = as_user(world.bob)
    bad = bob.post(URL, {"name": "later", "template": "nope"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert bad.status_code == 400
    good = bob.post(
        URL, {"name": "later", "template": "llama-h100"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert good.status_code == 201


def test_an_over_quota_request_says_used_requested_limit_and_where_to_ask(world, as_user):
    response = as_user(world.bob).post(URL, {"name": "big", "template": "llama-h100", "max_replicas": 8})
    assert response.status_code == 409
    body = error(response)
    assert body["code"] == "quota_exceeded"
    assert body["details"]["quota_request_url"] == "/api/v1/quota-requests/"
    assert {"dimension": "gpus_total", "used": 1, "requested": 8, "limit": 8} in body["details"]["exceeded"]
    assert "1 used + 8 requested > 8 allowed" in body["message"]


def test_viewers_read_but_cannot_write(world, as_user):
    carol = as_user(world.carol)
    assert carol.get(URL).status_code == 200
    assert carol.get(f"{URL}{world.acme_endpoint.pk}/").status_code == 200
    for response in (
        carol.post(URL, {"name": "mine", "template": "llama-h100"}),
        carol.post(f"{URL}{world.acme_endpoint.pk}/scale/", {"max_replicas": 2}),
        carol.delete(f"{URL}{world.acme_endpoint.pk}/"),
    ):
        assert response.status_code == 403
        assert error(response)["code"] == "permission_denied"
        assert "only an owner or member of tenant acme" in error(response)["message"]


def test_a_member_of_two_tenants_sees_both_and_names_the_tenant_on_create(world, as_user):
    dual = as_user(world.dual)
    assert {e["tenant"] for e in dual.get(URL).json()["results"]} == {"acme", "globex"}
    assert [e["name"] for e in dual.get(URL, {"tenant": "globex"}).json()["results"]] == ["gchat"]
    missing = dual.post(URL, {"name": "x", "template": "llama-h100"})
    assert missing.status_code == 400
    assert error(missing)["fields"]["tenant"] == ["is required: give one of your tenants (acme, globex)"]
    made = dual.post(URL, {"name": "x", "template": "secret-h100", "tenant": "globex"})
    assert made.status_code == 201 and made.json()["tenant"] == "globex"


def test_the_list_filters_and_paginates_and_hides_deleted_endpoints(world, as_user):
    alice = as_user(world.alice)
    for name in ("a1", "a2", "a3"):
        assert alice.post(URL, {"name": name, "template": "llama-h100"}).status_code == 201
    gone = Endpoint.objects.get(name="a3")
    actions.delete_endpoint(None, gone)
    actions.transition_endpoint(gone.pk, expected=EndpointPhase.DELETING, new=EndpointPhase.DELETED)
    actions.transition_endpoint(world.acme_endpoint.pk, expected="requested", new="scheduling")

    names = lambda **q: [e["name"] for e in alice.get(URL, q).json()["results"]]  # noqa: E731
    assert names() == ["a1", "a2", "chat"]
    assert names(phase="scheduling") == ["chat"]
    assert names(phase=["requested", "scheduling"]) == ["a1", "a2", "chat"]
    assert names(phase="deleted") == ["a3"]
    assert names(name="a2") == ["a2"]
    assert names(template="llama-h100", tier="h100") == ["a1", "a2", "chat"]
    assert names(tier="l40s") == []
    page = alice.get(URL, {"limit": 1, "offset": 1}).json()
    assert (page["count"], [e["name"] for e in page["results"]]) == (3, ["a2"])
    assert page["next"] and page["previous"]
    deleted = alice.get(f"{URL}{gone.pk}/")  # still there to read, with its timeline
    assert deleted.status_code == 200 and deleted.json()["phase"] == "deleted"
    assert alice.get(f"{URL}{gone.pk}/events/").json()["count"] == 3
    bad = alice.get(URL, {"phase": "sleeping"})
    assert bad.status_code == 400 and "phase" in error(bad)["fields"]


def test_scale_then_delete_and_the_timeline_tells_the_story(
    world, as_user, sent_tasks, django_capture_on_commit_callbacks
):
    bob = as_user(world.bob)
    url = f"{URL}{world.acme_endpoint.pk}/"
    with django_capture_on_commit_callbacks(execute=True):
        scaled = bob.post(f"{url}scale/", {"max_replicas": 3}, HTTP_IDEMPOTENCY_KEY="scale-1")
        again = bob.post(f"{url}scale/", {"max_replicas": 3}, HTTP_IDEMPOTENCY_KEY="scale-1")
        deleted = bob.delete(url)
    assert scaled.status_code == 200 and scaled.json()["max_replicas"] == 3
    assert scaled.json()["cost"]["monthly_at_max_replicas"] == "8760.00"  # 4.00 × 3 × 730
    assert again.json() == scaled.json()
    assert deleted.status_code == 202 and deleted.json()["phase"] == "deleting"
    assert bob.delete(url).status_code == 202  # asking again is harmless
    events = bob.get(f"{url}events/").json()
    assert [e["reason"] for e in events["results"]] == ["Requested", "Scaled", "DeleteRequested"]
    assert EndpointEvent.objects.filter(endpoint=world.acme_endpoint, reason="Scaled").count() == 1
    assert [name for name, _ in sent_tasks] == [dispatch.SCALE, dispatch.DELETE]


def test_scale_needs_something_to_change(world, as_user):
    response = as_user(world.bob).post(f"{URL}{world.acme_endpoint.pk}/scale/", {})
    assert response.status_code == 400
    assert error(response)["fields"] == {"non_field_errors": ["give min_replicas, max_replicas or both"]}


def test_automation_authenticates_with_a_bearer_token(world, client):
    issued = actions.issue_api_token(world.bob, world.bob, name="ci")
    ok = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    assert ok.status_code == 200 and [e["name"] for e in ok.json()["results"]] == ["chat"]
    created = client.post(
        URL,
        {"name": "from-ci", "template": "llama-h100"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {issued.secret}",
    )
    assert created.status_code == 201

    anonymous = client.get(URL)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Bearer realm="api"'
    assert error(anonymous)["code"] == "not_authenticated"
    wrong = client.get(URL, HTTP_AUTHORIZATION="Bearer ipt_00000000_nope")
    assert wrong.status_code == 401 and error(wrong)["code"] == "authentication_failed"
    assert "ipt_00000000_nope" not in wrong.content.decode()


def test_a_create_by_token_keeps_its_query_count(world, client, django_assert_max_num_queries):
    """Automation creates endpoints in bursts: every query of the request is one more round trip,
    most of them under the tenant's quota lock."""
    issued = actions.issue_api_token(world.bob, world.bob, name="ci")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.secret}", "content_type": "application/json"}
    client.post(URL, {"tenant": "acme", "name": "first", "template": "llama-h100"}, **auth)  # marks the token used
    with django_assert_max_num_queries(14):
        created = client.post(URL, {"tenant": "acme", "name": "second", "template": "llama-h100"}, **auth)
    assert created.status_code == 201, created.json()
