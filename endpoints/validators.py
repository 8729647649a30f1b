"""Validators for everything a person types that may reach a manifest.

Messages start with a lowercase verb so they read after the field name: "name must be at most 40
characters". Model fields use these, so the admin, the API and the actions check the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator

from . import naming

# Upper bounds shared by models, serializers and actions.
MAX_REPLICAS = 64
MAX_GPUS_PER_REPLICA = 16
MAX_QUOTA_GPUS = 10_000
MAX_QUOTA_ENDPOINTS = 1_000
MAX_QUOTA_REPLICAS = 10_000
MAX_TEXT = 1_000  # reasons, notes, descriptions
MAX_MESSAGE = 2_000  # phase and event messages written by the workers

MUTABLE_REFS = frozenset({"main", "master", "latest", "head", "dev", "develop", "nightly", "stable"})

HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
S3_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()-]+)+/?$")
PVC_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/[A-Za-z0-9._-]+)*/?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
OTHER_REVISION_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

IMAGE_REPOSITORY_RE = re.compile(
    r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
)
IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
IMAGE_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

RESOURCE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def between(low: int | float, high: int | float) -> list[Callable[[Any], None]]:
    """Min and max validators that both say the whole range."""
    message = f"must be between {low} and {high}"
    return [MinValueValidator(low, message=message), MaxValueValidator(high, message=message)]


def validate_endpoint_name(value: str) -> None:
    problem = naming.dns_label_problem(value, naming.MAX_ENDPOINT_NAME_LENGTH)
    if problem:
        raise ValidationError(problem, code="invalid_name")


def validate_dns_label(value: str) -> None:
    problem = naming.dns_label_problem(value, naming.MAX_DNS_LABEL_LENGTH)
    if problem:
        raise ValidationError(problem, code="invalid_name")


def validate_tier_name(value: str) -> None:
    # Tier names become label values and node names (gpu-<tier>-<n>) on the platform.
    problem = naming.dns_label_problem(value, 40)
    if problem:
        raise ValidationError(problem, code="invalid_name")


def validate_tenant_slug(value: str) -> None:
    problem = naming.tenant_slug_problem(value)
    if problem:
        raise ValidationError(problem, code="invalid_slug")


def validate_model_source(value: str) -> None:
    """hf://org/name, s3://bucket/path or pvc://claim[/path]."""
    scheme, sep, rest = value.partition("://")
    patterns = {"hf": HF_REPO_RE, "s3": S3_RE, "pvc": PVC_RE}
    if not sep or scheme not in patterns:
        raise ValidationError("must start with hf://, s3:// or pvc://", code="invalid_source")
    if not patterns[scheme].match(rest):
        examples = {"hf": "hf://org/name", "s3": "s3://bucket/path/to/model", "pvc": "pvc://claim/path"}
        raise ValidationError(f"must look like {examples[scheme]}", code="invalid_source")


def revision_problem(source: str, revision: str) -> str | None:
    """Why REVISION does not pin SOURCE to fixed bytes, or None.

    A Hugging Face branch or tag can move under a running endpoint, so hf:// sources need the
    40-character commit hash. s3:// and pvc:// sources name an object version or snapshot; any
    plain identifier will do except the usual moving names.
    """
    if not revision:
        return "is required: pin the exact revision of the weights"
    if revision.lower() in MUTABLE_REFS:
        return f"must be a fixed revision, not the moving name {revision!r}"
    if source.startswith("hf://"):
        if not COMMIT_RE.match(revision):
            return "must be the 40-character lowercase commit hash for hf:// sources"
    elif not OTHER_REVISION_RE.match(revision):
        return "must be at most 128 letters, digits, '.', '_' or '-'"
    return None


def validate_image_repository(value: str) -> None:
    if len(value) > 255 or not IMAGE_REPOSITORY_RE.match(value):
        raise ValidationError(
            "must be an image repository such as vllm/vllm-openai or registry.example.com:5000/team/vllm",
            code="invalid_repository",
        )


def validate_image_tag(value: str) -> None:
    if not IMAGE_TAG_RE.match(value):
        raise ValidationError("must be an image tag of at most 128 characters", code="invalid_tag")
    if value.lower() in MUTABLE_REFS:
        raise ValidationError(f"must be a pinned version, not the moving tag {value!r}", code="mutable_tag")


def validate_image_digest(value: str) -> None:
    if not IMAGE_DIGEST_RE.match(value):
        raise ValidationError("must be sha256: followed by 64 lowercase hex digits", code="invalid_digest")


def validate_resource_name(value: str) -> None:
    if len(value) > 253 or not RESOURCE_NAME_RE.match(value):
        raise ValidationError(
            "must be an extended resource name such as nvidia.com/gpu or nvidia.com/mig-1g.10gb",
            code="invalid_resource",
        )


def _label_key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return "keys must be strings"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not LABEL_PREFIX_RE.match(prefix)):
        return f"key {key[:80]!r} has an invalid prefix"
    if not name or len(name) > 63 or not LABEL_NAME_RE.match(name):
        return f"key {key[:80]!r} must be a Kubernetes label key (name part at most 63 characters)"
    return None


def _label_value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "values must be strings"
    if value and (len(value) > 63 or not LABEL_NAME_RE.match(value)):
        return f"value {value[:80]!r} must be a Kubernetes label value (at most 63 characters)"
    return None


def validate_node_labels(value: Any) -> None:
    """A flat mapping of Kubernetes label keys to label values (the tier's nodeSelector)."""
    if not isinstance(value, dict):
        raise ValidationError("must be a mapping of label keys to values", code="invalid_labels")
    if len(value) > 20:
        raise ValidationError("must have at most 20 labels", code="invalid_labels")
    for key, item in value.items():
        problem = _label_key_problem(key) or _label_value_problem(item)
        if problem:
            raise ValidationError(problem, code="invalid_labels")


def validate_taints(value: Any) -> None:
    """A list of {key, value, effect} taints the tier's nodes carry (the pods tolerate them)."""
    if not isinstance(value, list):
        raise ValidationError("must be a list of {key, value, effect}", code="invalid_taints")
    if len(value) > 10:
        raise ValidationError("must have at most 10 taints", code="invalid_taints")
    for taint in value:
        if not isinstance(taint, dict) or set(taint) - {"key", "value", "effect"}:
            raise ValidationError("each taint must be {key, value, effect}", code="invalid_taints")
        problem = _label_key_problem(taint.get("key")) or _label_value_problem(taint.get("value", ""))
        if problem:
            raise ValidationError(problem, code="invalid_taints")
        if taint.get("effect") not in TAINT_EFFECTS:
            raise ValidationError(f"effect must be one of {', '.join(TAINT_EFFECTS)}", code="invalid_taints")


def validate_tier_gpus(value: Any) -> None:
    """A mapping of GPU tier name to a whole number of GPUs (per-tier quota)."""
    if not isinstance(value, dict):
        raise ValidationError("must be a mapping of GPU tier name to GPUs", code="invalid_tier_gpus")
    if len(value) > 50:
        raise ValidationError("must name at most 50 tiers", code="invalid_tier_gpus")
    for name, gpus in value.items():
        problem = naming.dns_label_problem(str(name), 40)
        if problem:
            raise ValidationError(f"tier {str(name)[:80]!r}: {problem}", code="invalid_tier_gpus")
        if isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_QUOTA_GPUS:
            raise ValidationError(
                f"tier {name!r}: GPUs must be a whole number between 0 and {MAX_QUOTA_GPUS}",
                code="invalid_tier_gpus",
            )
