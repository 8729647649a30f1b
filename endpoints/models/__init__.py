"""The domain: tenants and quotas, the catalog, endpoints and their history, tokens and audit."""

from __future__ import annotations

from .catalog import GpuTier, Model, RuntimeImage, Template
from .clusters import EndpointKey, TenantCluster
from .endpoints import Endpoint, EndpointEvent, EndpointUsage, set_condition
from .security import ApiToken, AuditEvent, IdempotencyRecord
from .tenancy import Membership, Quota, QuotaRequest, Tenant

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Endpoint",
    "EndpointEvent",
    "EndpointKey",
    "EndpointUsage",
    "GpuTier",
    "IdempotencyRecord",
    "Membership",
    "Model",
    "Quota",
    "QuotaRequest",
    "RuntimeImage",
    "Template",
    "Tenant",
    "TenantCluster",
    "set_condition",
]
