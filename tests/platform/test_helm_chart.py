"""The portal's Helm chart (deploy/helm/inference-portal) against the local platform's API server.

Three ways: every object the chart renders passes a server-side dry run; the worker's
ServiceAccount, with nothing but its own token, can do the worker's job in the host cluster (a
tenant namespace, the real vcluster chart installed with helm, the vc-<name> kubeconfig Secret);
and the same token cannot step outside that job.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.waiting import wait_for

pytestmark = pytest.mark.platform

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "inference-portal"
VCLUSTER_VALUES = ROOT / "deploy" / "local" / "vcluster-values.yaml"
VERSIONS = ROOT / "deploy" / "local" / "versions.env"
# `helm template` assumes Kubernetes v1.20 unless told; the chart needs 1.30 (ValidatingAdmissionPolicy).
KUBE_VERSION = "1.36.0"
MANAGED_BY = {"inference-portal.io/managed-by": "inference-portal"}
# What the worker puts on a tenant namespace; the admission policy insists on the first two.
TENANT_LABELS = {
    **MANAGED_BY,
    "pod-security.kubernetes.io/enforce": "baseline",
    "inference-portal.io/route-access": "allowed",
}

BASE_VALUES: dict = {
    "image": {"repository": "registry.example.com/inference-portal", "tag": "0.1.0"},
    "secrets": {"secretKey": {"name": "portal-secrets", "key": "secret-key"}},
    "config": {
        "gateway": {"domain": "inference.example.com"},
        "vcluster": {"chart": "oci://registry.example.com/charts/vcluster", "version": "0.30.0"},
        "prometheusUrl": "http://prometheus.monitoring:9090",
    },
    "database": {"mode": "external", "external": {"urlSecret": {"name": "portal-db", "key": "url"}}},
    "broker": {"mode": "external", "external": {"urlSecret": {"name": "portal-broker", "key": "url"}}},
}

COMBINATIONS: dict[str, dict] = {
    "external-datastores-ingress": {
        "expose": {
            "type": "ingress",
            "hostnames": ["portal.example.com"],
            "ingress": {"className": "nginx", "tlsSecretName": "portal-tls"},
        },
    },
    "bundled-datastores-httproute": {
        "database": {
            "mode": "bundled",
            "bundled": {"passwordSecret": {"name": "portal-pg", "key": "password"}},
        },
        "broker": {"mode": "bundled"},
        "expose": {
            "type": "httpRoute",
            "hostnames": ["portal.inference.localhost"],
            "httpRoute": {"parentRefs": [{"name": "shared-inference", "namespace": "shared-gateways"}]},
        },
    },
    "external-database-bundled-broker-no-exposure": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "secrets": {"hfToken": {"name": "hf", "key": "token"}},
        "broker": {"mode": "bundled"},
        "expose": {"type": "none"},
        "worker": {"concurrency": 8},
    },
}


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def run(argv: list[str], *, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def helm_template(
    platform, release: str, namespace: str, values: dict, *extra: str
) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values, handle)
    try:
        return run(
            [
                platform.env["PORTAL_HELM_BIN"],
                "template",
                release,
                str(CHART),
                "--namespace",
                namespace,
                "--kube-version",
                KUBE_VERSION,
                "--values",
                handle.name,
                *extra,
            ]
        )
    finally:
        os.unlink(handle.name)


def render(platform, release: str, namespace: str, values: dict, *extra: str) -> list[dict]:
    result = helm_template(platform, release, namespace, values, *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubectl(platform, *args: str, stdin: str | None = None, kubeconfig: str | None = None):
    return run([platform.kubectl, f"--kubeconfig={kubeconfig or platform.kubeconfig}", *args], stdin=stdin)


def as_yaml(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def short_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def admin(platform) -> client.ApiClient:
    return config.new_client_from_config(config_file=platform.kubeconfig)


@pytest.fixture
def fresh_namespace(admin) -> Iterator[str]:
    name = f"hc-{short_id()}"
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    client.CoreV1Api(admin).delete_namespace(name)


# -- 1. rendering, server-side dry run, schema -------------------------------------------------


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_rendered_object_passes_a_server_side_dry_run(platform, fresh_namespace, combination):
    docs = render(platform, "portal", fresh_namespace, merged(BASE_VALUES, COMBINATIONS[combination]))
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Deployment",
        "Service",
        "Job",
        "ServiceAccount",
        "ClusterRole",
        "ValidatingAdmissionPolicy",
    } <= kinds
    if combination.startswith("external-datastores"):
        assert "Ingress" in kinds and "StatefulSet" not in kinds
    if combination.startswith("bundled"):
        assert {"HTTPRoute", "StatefulSet", "NetworkPolicy"} <= kinds

    result = kubectl(
        platform,
        "apply",
        "--server-side",
        "--dry-run=server",
        "-n",
        fresh_namespace,
        "-f",
        "-",
        stdin=as_yaml(docs),
    )

    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(docs), result.stdout


def test_the_schema_rejects_a_wrong_type_and_names_the_field(platform):
    result = helm_template(platform, "portal", "portal", merged(BASE_VALUES, {"web": {"replicas": "many"}}))
    assert result.returncode != 0
    assert "/web/replicas" in result.stderr and "want integer" in result.stderr


def test_the_schema_names_every_missing_required_value(platform):
    result = helm_template(platform, "portal", "portal", {})
    assert result.returncode != 0
    for path in (
        "/image/repository",
        "/secrets/secretKey/name",
        "/config/gateway/domain",
        "/config/vcluster/chart",
        "/database/external/urlSecret/name",
        "/broker/external/urlSecret/name",
    ):
        assert path in result.stderr, f"{path} not named in: {result.stderr}"


def test_the_schema_rejects_a_misspelt_key_and_an_incomplete_route(platform):
    typo = helm_template(platform, "portal", "portal", merged(BASE_VALUES, {"worker": {"concurency": 2}}))
    assert typo.returncode != 0 and "concurency" in typo.stderr

    route = helm_template(
        platform, "portal", "portal", merged(BASE_VALUES, {"expose": {"type": "httpRoute"}})
    )
    assert route.returncode != 0
    assert "/expose/hostnames" in route.stderr and "/expose/httpRoute/parentRefs" in route.stderr


def test_the_workloads_run_one_image_with_their_commands_and_no_secret_values(platform):
    values = merged(BASE_VALUES, COMBINATIONS["external-database-bundled-broker-no-exposure"])
    docs = render(platform, "portal", "portal", values)
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"
    }
    assert set(deployments) == {"web", "worker", "beat", "watcher"}

    def container(doc: dict) -> dict:
        return doc["spec"]["template"]["spec"]["containers"][0]

    image = "registry.example.com/inference-portal@sha256:" + "ab" * 32
    assert {container(d)["image"] for d in deployments.values()} == {image}
    assert container(deployments["worker"])["command"][:4] == ["celery", "-A", "portal", "worker"]
    assert "--concurrency=8" in container(deployments["worker"])["command"]
    beat = deployments["beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert container(beat)["command"][:4] == ["celery", "-A", "portal", "beat"]
    assert deployments["watcher"]["spec"]["replicas"] == 1
    assert container(deployments["watcher"])["command"] == ["python", "manage.py", "watch_clusters"]
    web = container(deployments["web"])
    assert web["command"][:2] == ["gunicorn", "portal.wsgi:application"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"

    (job,) = [d for d in docs if d["kind"] == "Job"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "manage.py",
        "migrate",
        "--noinput",
    ]

    # Secrets only by reference; in-cluster credentials (no KUBECONFIG).
    for doc in [*deployments.values(), job]:
        env = {e["name"]: e for e in container(doc)["env"]}
        assert "KUBECONFIG" not in env
        for name in ("PORTAL_SECRET_KEY", "DATABASE_URL", "PORTAL_HF_TOKEN"):
            assert set(env[name]) == {"name", "valueFrom"}, env[name]
        assert env["CELERY_BROKER_URL"]["value"] == "redis://portal-inference-portal-redis:6379/0"
        assert env["PORTAL_VCLUSTER_CHART"]["value"] == "oci://registry.example.com/charts/vcluster"
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_with_a_bundled_database_migrations_run_after_install_once_postgresql_answers(platform):
    docs = render(
        platform, "portal", "portal", merged(BASE_VALUES, COMBINATIONS["bundled-datastores-httproute"])
    )
    (job,) = [d for d in docs if d["kind"] == "Job"]
    # The StatefulSet only exists once the release's objects are created: a pre-install hook would hang.
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]] == ["wait-for-postgresql"]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["value"] == (
        "postgresql://portal:$(PORTAL_DATABASE_PASSWORD)@portal-inference-portal-postgresql:5432/portal"
    )
    assert env["PORTAL_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "portal-pg",
        "key": "password",
    }
    (postgresql,) = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-postgresql")
    ]
    assert postgresql["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"


# -- 2 and 3. the worker's ServiceAccount, with only its token ---------------------------------


@dataclass
class Identity:
    """A ServiceAccount of the chart, reachable with nothing but a token from the TokenRequest API."""

    name: str
    api: client.ApiClient
    kubeconfig: str


@dataclass
class Install:
    """The chart's RBAC and admission policy, applied for real in a namespace of their own."""

    namespace: str
    tenant_role: str
    reader_role: str
    policy: str
    worker: Identity
    web: Identity
    created_namespaces: list[str] = field(default_factory=list)


def token_kubeconfig(platform, token: str, path: Path) -> str:
    admin_cfg = yaml.safe_load(Path(platform.kubeconfig).read_text())
    cluster = admin_cfg["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return str(path)


def identity(platform, admin, namespace: str, name: str, directory: Path) -> Identity:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = (
        client.CoreV1Api(admin).create_namespaced_service_account_token(name, namespace, request).status.token
    )
    kubeconfig = token_kubeconfig(platform, token, directory / f"{name}.yaml")
    return Identity(name, config.new_client_from_config(config_file=kubeconfig), kubeconfig)


def status_of(call: Callable[[], object]) -> tuple[int, str]:
    """(HTTP status, body) of CALL: 200 when it went through."""
    try:
        call()
    except ApiException as exc:
        return exc.status, exc.body or ""
    return 200, ""


def denied(call: Callable[[], object], *, by: str | None = None) -> str:
    """Assert CALL is refused with 403 (by the named admission policy, when BY is given); the message."""
    code, body = status_of(call)
    assert code == 403, f"expected 403, got {code}: {body}"
    if by:
        assert by in body, body
    return body


def dry(**kwargs) -> dict:
    # Refusals are tried as dry runs: authorization, RBAC's escalation check and admission all run,
    # and should the guard ever fail, nothing is left behind.
    return {"dry_run": "All", **kwargs}


def binding(name: str, role_kind: str, role: str, subjects: list[dict]) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


@pytest.fixture(scope="module")
def installed(platform, admin, tmp_path_factory) -> Iterator[Install]:
    namespace = f"hc-portal-{short_id()}"
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    docs = render(
        platform,
        "portal",
        namespace,
        BASE_VALUES,
        "--show-only",
        "templates/serviceaccounts.yaml",
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/admission-policy.yaml",
    )
    manifest = as_yaml(docs)
    install: Install | None = None
    try:
        result = kubectl(platform, "apply", "--server-side", "-f", "-", stdin=manifest)
        assert result.returncode == 0, result.stderr

        def named(kind: str, suffix: str) -> str:
            return next(
                d["metadata"]["name"]
                for d in docs
                if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)
            )

        directory = tmp_path_factory.mktemp("tokens")
        install = Install(
            namespace=namespace,
            tenant_role=named("ClusterRole", "-tenant-namespace"),
            reader_role=named("ClusterRole", "-reader"),
            policy=named("ValidatingAdmissionPolicy", "-tenant-guard"),
            worker=identity(platform, admin, namespace, named("ServiceAccount", "-worker"), directory),
            web=identity(platform, admin, namespace, named("ServiceAccount", "-web"), directory),
        )
        worker_rbac = client.RbacAuthorizationV1Api(install.worker.api)
        wait_for(
            lambda: status_of(lambda: client.CoreV1Api(install.worker.api).list_node(limit=1))[0] == 200,
            timeout=30,
            what="the worker's ClusterRoleBindings to take effect",
        )
        # The policy is in force once the worker's attempt to bind tenant-namespace in its own
        # (unlabelled) namespace is refused by it rather than allowed.
        probe = binding("probe", "ClusterRole", install.tenant_role, [worker_subject(install)])
        wait_for(
            lambda: (
                install.policy
                in status_of(lambda: worker_rbac.create_namespaced_role_binding(namespace, probe, **dry()))[1]
            ),
            timeout=30,
            what="the admission policy to take effect",
        )
        yield install
    finally:
        for name in install.created_namespaces if install else []:
            try:
                core.delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        kubectl(platform, "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=manifest)
        core.delete_namespace(namespace)


def worker_subject(install: Install) -> dict:
    return {"kind": "ServiceAccount", "name": install.worker.name, "namespace": install.namespace}


def new_tenant_namespace(install: Install) -> str:
    """What the worker does first for a tenant: its namespace, then tenant-namespace bound to itself there."""
    name = f"t-hc{short_id()}"
    install.created_namespaces.append(name)
    core = client.CoreV1Api(install.worker.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=TENANT_LABELS)))
    client.RbacAuthorizationV1Api(install.worker.api).create_namespaced_role_binding(
        name, binding("inference-portal", "ClusterRole", install.tenant_role, [worker_subject(install)])
    )
    wait_for(
        lambda: status_of(lambda: core.list_namespaced_secret(name, limit=1))[0] == 200,
        timeout=30,
        what=f"the worker's RoleBinding in {name} to take effect",
    )
    return name


def test_with_only_its_token_the_worker_sets_up_a_tenant_namespace_and_works_in_it(installed, admin):
    namespace = new_tenant_namespace(installed)
    core = client.CoreV1Api(installed.worker.api)
    apps = client.AppsV1Api(installed.worker.api)

    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="vc-config-tc"), string_data={"a": "b"})
    )
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="tc"),
            spec=client.V1ServiceSpec(selector={"app": "vcluster"}, ports=[client.V1ServicePort(port=443)]),
        ),
    )
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "tc"},
            "spec": {
                "replicas": 0,
                "serviceName": "tc",
                "selector": {"matchLabels": {"app": "vcluster"}},
                "template": {
                    "metadata": {"labels": {"app": "vcluster"}},
                    "spec": {
                        "containers": [{"name": "syncer", "image": "ghcr.io/loft-sh/vcluster-pro:0.30.0"}]
                    },
                },
            },
        },
    )
    # The tenant cluster writes its kubeconfig Secret vc-<name>; the worker reads it.
    client.CoreV1Api(admin).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="vc-tc"), string_data={"config": "kubeconfig"}),
    )
    assert core.read_namespaced_secret("vc-tc", namespace).data["config"]

    # Capacity pages and the shared Gateway, cluster-wide and read-only.
    assert core.list_node().items
    assert core.list_pod_for_all_namespaces(limit=5) is not None
    assert core.list_namespaced_event(namespace) is not None
    custom = client.CustomObjectsApi(installed.worker.api)
    gateway = custom.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", "shared-gateways", "gateways", "shared-inference"
    )
    assert gateway["metadata"]["name"] == "shared-inference"
    assert custom.list_cluster_custom_object("gateway.networking.k8s.io", "v1", "gatewayclasses")["items"]

    # And when the tenant goes, its namespace goes.
    core.delete_namespace(namespace)
    code, _ = status_of(lambda: client.CoreV1Api(admin).read_namespace(namespace))
    assert code == 404 or client.CoreV1Api(admin).read_namespace(namespace).status.phase == "Terminating"


def vcluster_chart(platform) -> str:
    chart = platform.env.get("PORTAL_VCLUSTER_CHART")
    if chart:
        return chart
    version = next(
        line.split("=", 1)[1].strip()
        for line in VERSIONS.read_text().splitlines()
        if line.startswith("VCLUSTER_VERSION=")
    )
    result = run(
        ["go", "mod", "download", "-json", f"github.com/loft-sh/vcluster@{version}"],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr or result.stdout
    return str(Path(json.loads(result.stdout)["Dir"]) / "chart")


def test_with_only_its_token_the_worker_installs_and_uninstalls_the_real_vcluster_chart(
    installed, platform, admin
):
    namespace = new_tenant_namespace(installed)
    helm = [
        platform.env["PORTAL_HELM_BIN"],
        f"--kubeconfig={installed.worker.kubeconfig}",
        "--namespace",
        namespace,
    ]
    release = "tc"
    cluster_rbac = f"vc-{release}-v-{namespace}"
    chart = vcluster_chart(platform)
    install = [*helm, "upgrade", "--install", release, chart, "--values", str(VCLUSTER_VALUES)]
    try:
        result = run(install, timeout=180)
        assert result.returncode == 0, result.stderr

        status = json.loads(run([*helm, "status", release, "--output", "json"]).stdout)
        assert status["info"]["status"] == "deployed"
        # The chart's cluster-scoped RBAC (Gateway import from the host) went through the policy.
        rbac_admin = client.RbacAuthorizationV1Api(admin)
        assert rbac_admin.read_cluster_role(cluster_rbac).rules
        assert rbac_admin.read_cluster_role_binding(cluster_rbac).subjects[0].namespace == namespace

        # The tenant cluster comes up and writes its kubeconfig; the worker reads it with its token.
        core = client.CoreV1Api(installed.worker.api)
        secret = wait_for(
            lambda: (
                status_of(lambda: core.read_namespaced_secret(f"vc-{release}", namespace))[0] == 200
                and core.read_namespaced_secret(f"vc-{release}", namespace)
            ),
            timeout=180,
            interval=1,
            what=f"Secret vc-{release} from the tenant cluster",
        )
        assert yaml.safe_load(base64.b64decode(secret.data["config"]))["clusters"]

        # Running it again is an upgrade: helm patches every object, and that is allowed too.
        result = run(install, timeout=180)
        assert result.returncode == 0, result.stderr
        assert json.loads(run([*helm, "status", release, "--output", "json"]).stdout)["version"] == 2

        result = run([*helm, "uninstall", release], timeout=180)
        assert result.returncode == 0, result.stderr
        assert status_of(lambda: rbac_admin.read_cluster_role(cluster_rbac))[0] == 404
        assert status_of(lambda: rbac_admin.read_cluster_role_binding(cluster_rbac))[0] == 404
        core.delete_namespace(namespace)
    finally:
        # Whatever failed above, leave no tenant cluster (or its cluster-scoped RBAC) behind.
        admin_helm = [platform.env["PORTAL_HELM_BIN"], f"--kubeconfig={platform.kubeconfig}", "-n", namespace]
        run([*admin_helm, "uninstall", release, "--ignore-not-found"], timeout=180)


def test_its_token_cannot_read_secrets_outside_tenant_namespaces(installed):
    core = client.CoreV1Api(installed.worker.api)
    for namespace in ("kube-system", "default", installed.namespace):
        denied(lambda namespace=namespace: core.list_namespaced_secret(namespace))
    denied(lambda: core.read_namespaced_secret("anything", "kube-system"))
    denied(lambda: core.list_secret_for_all_namespaces())


def test_its_token_cannot_bind_roles_in_a_namespace_the_portal_does_not_manage(installed, admin):
    rbac = client.RbacAuthorizationV1Api(installed.worker.api)
    unlabelled = f"t-hc{short_id()}"
    installed.created_namespaces.append(unlabelled)
    client.CoreV1Api(admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=unlabelled))
    )
    grant = binding("grab", "ClusterRole", installed.tenant_role, [worker_subject(installed)])

    for namespace in ("kube-system", "default", unlabelled):
        message = denied(
            lambda namespace=namespace: rbac.create_namespaced_role_binding(namespace, grant, **dry()),
            by=installed.policy,
        )
        assert "labelled inference-portal.io/managed-by=inference-portal" in message
    role = {
        "metadata": {"name": "grab"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    denied(lambda: rbac.create_namespaced_role("kube-system", role, **dry()))


def test_its_token_cannot_delete_adopt_or_invent_namespaces_outside_the_tenant_pattern(installed, admin):
    core = client.CoreV1Api(installed.worker.api)
    victim = f"hc-victim-{short_id()}"
    installed.created_namespaces.append(victim)
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=victim)))

    denied(lambda: core.delete_namespace(victim), by=installed.policy)
    denied(lambda: core.delete_namespace(installed.namespace, **dry()), by=installed.policy)
    # default and kube-system: Kubernetes itself refuses before the policy is asked.
    for protected in ("default", "kube-system"):
        denied(lambda protected=protected: core.delete_namespace(protected, **dry()))
    # Labelling someone else's namespace as the portal's would make it deletable: refused.
    denied(
        lambda: core.patch_namespace(victim, {"metadata": {"labels": TENANT_LABELS}}, **dry()),
        by=installed.policy,
    )
    assert client.CoreV1Api(admin).read_namespace(victim).status.phase == "Active"

    def create(name: str, labels: dict) -> Callable[[], object]:
        return lambda: core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)), **dry()
        )

    denied(create(f"hc-{short_id()}", TENANT_LABELS), by=installed.policy)  # not t-*
    denied(create(f"t-hc{short_id()}", {}), by=installed.policy)  # not labelled
    privileged = {**TENANT_LABELS, "pod-security.kubernetes.io/enforce": "privileged"}
    denied(create(f"t-hc{short_id()}", privileged), by=installed.policy)


def test_its_token_cannot_grant_itself_or_anyone_more(installed):
    rbac = client.RbacAuthorizationV1Api(installed.worker.api)
    namespace = new_tenant_namespace(installed)
    me = worker_subject(installed)

    def cluster_binding(name: str, role: str, subjects: list[dict]) -> dict:
        return {**binding(name, "ClusterRole", role, subjects), "kind": "ClusterRoleBinding"}

    # cluster-admin, whatever the name: the policy's naming rule, then RBAC's escalation check.
    denied(
        lambda: rbac.create_cluster_role_binding(
            cluster_binding("portal-admin", "cluster-admin", [me]), **dry()
        )
    )
    vc_named = f"vc-x-v-{namespace}"
    denied(
        lambda: rbac.create_cluster_role_binding(cluster_binding(vc_named, "cluster-admin", [me]), **dry())
    )
    # The vcluster chart's names pass only with the chart's shape: a binding to the ClusterRole of
    # the same name, for ServiceAccounts in tenant namespaces.
    tenant_sa = {"kind": "ServiceAccount", "name": "vc-x", "namespace": namespace}
    denied(
        lambda: rbac.create_cluster_role_binding(
            cluster_binding(vc_named, installed.reader_role, [tenant_sa]), **dry()
        ),
        by=installed.policy,
    )
    rbac.create_cluster_role(
        {
            "metadata": {"name": vc_named},
            "rules": [
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]}
            ],
        }
    )
    try:
        outsider = {"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"}
        denied(
            lambda: rbac.create_cluster_role_binding(
                cluster_binding(vc_named, vc_named, [outsider]), **dry()
            ),
            by=installed.policy,
        )
    finally:
        rbac.delete_cluster_role(vc_named)
    # Inside its own tenant namespace: not admin (escalation check), and tenant-namespace only for itself.
    for role in ("admin", "cluster-admin", "edit"):
        denied(
            lambda role=role: rbac.create_namespaced_role_binding(
                namespace, binding("grab", "ClusterRole", role, [me]), **dry()
            )
        )
    denied(
        lambda: rbac.create_namespaced_role_binding(
            namespace, binding("lend", "ClusterRole", installed.tenant_role, [tenant_sa]), **dry()
        ),
        by=installed.policy,
    )
    # A vcluster-named ClusterRole reading Secrets everywhere: the worker does not hold that (RBAC).
    # One handing out what the worker does hold, deleting namespaces, would let a tenant pod delete any
    # namespace without meeting the policy's namespace rules: the policy allows only read verbs.
    role = {
        "metadata": {"name": vc_named},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
    }
    denied(lambda: rbac.create_cluster_role(role, **dry()))
    role["rules"] = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["delete"]}]
    denied(lambda: rbac.create_cluster_role(role, **dry()), by=installed.policy)
    # No tokens for other ServiceAccounts, even in its own namespace.
    client.CoreV1Api(installed.worker.api).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="vc-x"))
    )
    denied(
        lambda: client.CoreV1Api(installed.worker.api).create_namespaced_service_account_token(
            "vc-x",
            namespace,
            client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
        )
    )


def test_the_web_token_only_reads_the_cluster(installed):
    core = client.CoreV1Api(installed.web.api)
    assert core.list_node().items
    assert core.list_pod_for_all_namespaces(limit=1) is not None
    denied(lambda: core.list_secret_for_all_namespaces())
    denied(lambda: core.list_namespace())
    denied(
        lambda: core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=f"t-hc{short_id()}", labels=TENANT_LABELS)),
            **dry(),
        )
    )
