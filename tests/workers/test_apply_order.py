"""The order in which the worker applies an endpoint's objects (a recording client at the seam)."""

from __future__ import annotations

import pytest

from tests.factories import make_endpoint, make_template, make_tenant, roomy_quota
from workers import manifests, provision
from workers.kube import PermanentKubeError

pytestmark = pytest.mark.django_db


class Recorder:
    """Stands where workers.kube.Cluster stands: records each apply, stores nothing."""

    name = "recorder"

    def __init__(self) -> None:
        self.applied: list[dict] = []
        self.reads: list[tuple] = []
        self.deleted: list[tuple[str, str]] = []
        self.applied_docs: dict[str, dict] = {}
        self.namespace_deleted = False  # then the next namespaced apply answers 404, as the API does

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, **kwargs) -> bool:
        self.deleted.append((kind, name))
        return False

    def get(self, *args, **kwargs) -> None:
        self.reads.append(args)
        return None  # a new endpoint: no auth Secret yet

    def apply(self, obj: dict) -> dict:
        if obj["kind"] == "Namespace":
            self.namespace_deleted = False
        elif self.namespace_deleted:
            raise PermanentKubeError(f"apply {obj['kind']}: 404 namespaces not found", 404)
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
    assert {o["kind"] for o in after} >= {"HTTPRoute", "PodDisruptionBudget", "NetworkPolicy"}
    assert "Service" in kinds[1:deployment]  # the route's backend exists before the route
    for obj in after:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-Deployment", obj["kind"]
    for obj in cluster.applied[1:deployment]:
        assert not obj["metadata"].get("ownerReferences"), obj["kind"]


def test_the_namespace_is_applied_once_per_client_and_again_when_it_was_deleted():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    first, second, third = (
        provision.load(make_endpoint(tenant, template, name=n).pk) for n in ("one", "two", "three")
    )
    cluster = Recorder()

    provision.apply_endpoint(cluster, first)
    provision.apply_endpoint(cluster, second)
    assert [o["kind"] for o in cluster.applied].count("Namespace") == 1

    cluster.namespace_deleted = True  # by hand, behind the portal's back
    provision.apply_endpoint(cluster, third)
    kinds = [o["kind"] for o in cluster.applied]
    assert kinds.count("Namespace") == 2
    assert {o["metadata"]["name"] for o in cluster.applied if o["kind"] == "Deployment"} == {
        "ep-one",
        "ep-two",
        "ep-three",
    }


def test_a_first_apply_reads_no_secret_and_a_later_one_reads_it_for_its_keys():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    endpoint = provision.load(make_endpoint(tenant, template).pk)
    cluster = Recorder()

    provision.apply_endpoint(cluster, endpoint)
    assert cluster.reads == []  # nothing was ever applied for it: no Secret to read

    endpoint.observed_generation = 1
    provision.apply_endpoint(cluster, endpoint)
    assert [r[:2] for r in cluster.reads] == [("v1", "Secret")]


def test_a_replica_range_that_becomes_fixed_loses_its_autoscaler():
    template = make_template(max_replicas=4)
    tenant = make_tenant(quota=roomy_quota(template.tier))
    endpoint = provision.load(make_endpoint(tenant, template, min_replicas=1, max_replicas=4).pk)
    cluster = Recorder()

    provision.apply_endpoint(cluster, endpoint)
    assert "HorizontalPodAutoscaler" in [o["kind"] for o in cluster.applied]
    assert cluster.deleted == []  # a first apply has nothing to remove

    endpoint.observed_generation, endpoint.min_replicas, endpoint.max_replicas = 1, 2, 2
    provision.apply_endpoint(cluster, endpoint)
    assert cluster.deleted == [("HorizontalPodAutoscaler", "ep-" + endpoint.name)]
