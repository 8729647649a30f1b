"""Names the portal gives to things in Kubernetes and DNS, in one place the workers reuse.

Every name the workers create is built here from two validated parts: the tenant slug and the
endpoint name. Nothing a user types is pasted into a manifest in any other way.

Layout (``<x>`` is a validated part):

- tenant namespace (in the host cluster and the tenant cluster): ``t-<tenant>``
- every object of one endpoint (Deployment, Service, HTTPRoute, ...): ``ep-<endpoint>``
- the public hostname: ``<endpoint>-<tenant>.<gateway domain>``

Why the limits are what they are:

- Kubernetes names that end up as DNS labels (Services, label values, pod hostnames) must be
  at most 63 characters. A Deployment ``ep-<endpoint>`` makes ReplicaSets named
  ``ep-<endpoint>-<hash of up to 10>`` and pods ``...-<5 random>``; the pod's hostname is the
  first 63 characters of that. With ``MAX_ENDPOINT_NAME_LENGTH = 40`` the longest pod name is
  3 + 40 + 11 + 6 = 60 characters, so nothing is ever truncated and two endpoints never clash.
- The hostname's first label is ``<endpoint>-<tenant>``: 40 + 1 + 20 = 61 <= 63.
- Tenant slugs contain no hyphen, so the tenant is always the part after the last hyphen of
  that label and two (endpoint, tenant) pairs can never produce the same hostname
  (``a-b`` + ``c`` and ``a`` + ``b-c`` would both give ``a-b-c`` otherwise).
- Names start with a letter (RFC 1035), which Service names require; DNS-1123 alone would
  allow a leading digit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .models import Endpoint, Tenant

# The longest names users may choose; see the module docstring for the arithmetic.
MAX_ENDPOINT_NAME_LENGTH = 40
MAX_TENANT_SLUG_LENGTH = 20
MAX_DNS_LABEL_LENGTH = 63

NAMESPACE_PREFIX = "t-"
OBJECT_PREFIX = "ep-"

DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
TENANT_SLUG_RE = re.compile(r"^[a-z][a-z0-9]*$")

DNS_LABEL_HELP = (
    "must be a DNS label: lowercase letters, digits and '-', starting with a letter "
    "and ending with a letter or digit"
)
TENANT_SLUG_HELP = "must be lowercase letters and digits only, starting with a letter (no '-')"


def dns_label_problem(value: str, max_length: int = MAX_DNS_LABEL_LENGTH) -> str | None:
    """Why VALUE is not an acceptable DNS label of at most MAX_LENGTH characters, or None."""
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    if not DNS_LABEL_RE.match(value):
        return DNS_LABEL_HELP
    return None


def tenant_slug_problem(value: str) -> str | None:
    """Why VALUE is not an acceptable tenant slug, or None."""
    if len(value) > MAX_TENANT_SLUG_LENGTH:
        return f"must be at most {MAX_TENANT_SLUG_LENGTH} characters (got {len(value)})"
    if not TENANT_SLUG_RE.match(value):
        return TENANT_SLUG_HELP
    return None


def namespace_for(tenant: Tenant | str) -> str:
    """The namespace that holds TENANT's workloads: ``t-<slug>``."""
    slug = tenant if isinstance(tenant, str) else tenant.slug
    return _checked(f"{NAMESPACE_PREFIX}{slug}")


def object_name(endpoint: Endpoint | str) -> str:
    """The name of every Kubernetes object that belongs to ENDPOINT: ``ep-<name>``."""
    name = endpoint if isinstance(endpoint, str) else endpoint.name
    return _checked(f"{OBJECT_PREFIX}{name}")


def hostname(endpoint: Endpoint, domain: str) -> str:
    """The public hostname of ENDPOINT under DOMAIN: ``<endpoint>-<tenant>.<domain>``."""
    label = _checked(f"{endpoint.name}-{endpoint.tenant.slug}")
    return f"{label}.{domain.strip('.')}"


def _checked(label: str) -> str:
    # The validators keep names short enough; this guards against a caller that skipped them.
    if len(label) > MAX_DNS_LABEL_LENGTH or not DNS_LABEL_RE.match(label):
        raise ValueError(f"{label!r} is not a DNS label of at most {MAX_DNS_LABEL_LENGTH} characters")
    return label
