from __future__ import annotations

import re

import yaml
from rest_framework.test import APIClient

from endpoints.api.urls import router


def test_the_openapi_schema_renders_with_every_resource(db):
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/v1/endpoints/",
        "/api/v1/endpoints/{id}/scale/",
        "/api/v1/endpoints/{id}/events/",
        "/api/v1/templates/",
        "/api/v1/models/{id}/approve/",
        "/api/v1/gpu-tiers/",
        "/api/v1/runtime-images/",
        "/api/v1/quotas/",
        "/api/v1/quota-requests/{id}/approve/",
        "/api/v1/tenants/{tenant_slug}/members/",
        "/api/v1/tokens/",
    ):
        assert path in schema["paths"], path
    create = schema["paths"]["/api/v1/endpoints/"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]
    assert schema["components"]["securitySchemes"]["tokenAuth"]["scheme"] == "bearer"


def test_the_docs_page_loads_nothing_from_a_cdn(db):
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    external = re.findall(r"""(?:src|href)\s*=\s*["'](https?:)?//""", html)
    assert external == []
    assert "/static/drf_spectacular_sidecar/" in html


def test_every_post_route_honours_idempotency_keys():
    missing = []
    for prefix, viewset, _basename in router.registry:
        for route in router.get_routes(viewset):
            for method, name in route.mapping.items():
                if method == "post" and hasattr(viewset, name):
                    if not getattr(getattr(viewset, name), "idempotent", False):
                        missing.append(f"{prefix} {name}")
    assert missing == []


def test_an_unknown_api_path_answers_in_the_same_error_shape(world, as_user):
    response = as_user(world.bob).get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert as_user(world.bob).get("/not-an-api-page/").status_code == 404
