"""The order in which the worker applies an endpoint's objects (a recording client at the seam)."""

from __future__ import annotations

import pytest

from tests.factories import make_endpoint, make_template, make_tenant, roomy_quota
from workers import manifests, provision

pytestmark = pytest.mark.django_db


class Recorder:
    """Stands where workers.kube.Cluster stands: records each apply, stores nothing."""

    def __init__(self) -> None:
        self.applied: list[dict] = []

    def get(self, *args, **kwargs) -> None:
        return None  # a new endpoint: no auth Secret yet

    def apply(self, obj: dict) -> dict:
        self.applied.append(obj)
        return {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{obj['kind']}"}}

    def apply_all(self, objs):
        for obj in list(objs):
            yield self.apply(obj)


def test_what_pods_need_is_applied_before_the_deployment_and_the_rest_is_owned_by_it():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    endpoint = provision.load(make_endpoint(tenant, template, min_replicas=1, max_replicas=2).pk)
    cluster = Recorder()

    provision.apply_endpoint(cluster, endpoint)

    kinds = [o["kind"] for o in cluster.applied]
    assert kinds[0] == "Namespace"
    deployment = kinds.index("Deployment")
    assert set(kinds[1:deployment]) == manifests.PREREQUISITE_KINDS
    after = cluster.applied[deployment + 1 :]
    assert {o["kind"] for o in after} >= {"Service", "HTTPRoute", "PodDisruptionBudget", "NetworkPolicy"}
    for obj in after:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-Deployment", obj["kind"]
    for obj in cluster.applied[1:deployment]:
        assert not obj["metadata"].get("ownerReferences"), obj["kind"]
