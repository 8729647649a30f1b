from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints.models import ApiToken, IdempotencyRecord
from tests.api.conftest import error

URL = "/api/v1/tokens/"


def test_a_new_token_is_shown_once_and_then_only_by_its_prefix(world, as_user, client):
    bob = as_user(world.bob)
    made = bob.post(URL, {"name": "ci"})
    assert made.status_code == 201
    secret = made.json()["secret"]
    assert secret.startswith(made.json()["prefix"] + "_")
    listed = bob.get(URL).json()["results"]
    shown = bob.get(f"{URL}{made.json()['id']}/").json()
    assert "secret" not in listed[0] and "secret" not in shown
    assert secret not in json.dumps(listed) + json.dumps(shown)
    assert client.get("/api/v1/endpoints/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200


def test_another_users_token_answers_404(world, as_user):
    theirs = as_user(world.grace).post(URL, {"name": "theirs"}).json()
    bob = as_user(world.bob)
    assert bob.get(f"{URL}{theirs['id']}/").status_code == 404
    assert bob.delete(f"{URL}{theirs['id']}/").status_code == 404
    assert bob.get(URL).json()["count"] == 0
    assert ApiToken.objects.get(pk=theirs["id"]).revoked_at is None


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"name": "x" * 65}, "name", "must be at most 64 characters"),
        ({}, "name", "is required"),
        ({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "must be in the future"),
    ],
)
def test_bad_token_input_names_the_field(world, as_user, payload, field, message):
    response = as_user(world.bob).post(URL, payload)
    assert response.status_code == 400
    assert error(response)["fields"][field] == [message]


def test_a_retried_token_create_makes_one_token_and_never_stores_the_secret(world, as_user):
    bob = as_user(world.bob)
    first = bob.post(URL, {"name": "ci"}, HTTP_IDEMPOTENCY_KEY="tok-1")
    second = bob.post(URL, {"name": "ci"}, HTTP_IDEMPOTENCY_KEY="tok-1")
    assert first.status_code == second.status_code == 201
    assert ApiToken.objects.filter(user=world.bob).count() == 1
    assert second.json()["secret"] is None  # shown once: the replay cannot show it again
    assert {k: v for k, v in second.json().items() if k != "secret"} == {
        k: v for k, v in first.json().items() if k != "secret"
    }
    stored = json.dumps(list(IdempotencyRecord.objects.values("response_body")))
    assert first.json()["secret"] not in stored


def test_a_revoked_token_stops_working(world, as_user, client):
    bob = as_user(world.bob)
    made = bob.post(
        URL, {"name": "ci", "expires_at": (timezone.now() + timedelta(days=1)).isoformat()}
    ).json()
    assert bob.delete(f"{URL}{made['id']}/").status_code == 204
    assert bob.get(f"{URL}{made['id']}/").json()["revoked_at"] is not None
    response = client.get("/api/v1/endpoints/", HTTP_AUTHORIZATION=f"Bearer {made['secret']}")
    assert response.status_code == 401 and error(response)["message"] == "invalid, expired or revoked token"


def test_a_token_reaches_only_its_users_tenants(world, as_user, client):
    secret = as_user(world.grace).post(URL, {"name": "ci"}).json()["secret"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert [e["name"] for e in client.get("/api/v1/endpoints/", **auth).json()["results"]] == ["gchat"]
    assert client.get(f"/api/v1/endpoints/{world.acme_endpoint.pk}/", **auth).status_code == 404
