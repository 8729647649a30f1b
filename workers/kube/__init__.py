"""The one door to Kubernetes: only this package imports the `kubernetes` client (ruff TID251)."""

from .client import (
    Cluster,
    KubeError,
    PermanentKubeError,
    TransientKubeError,
    host_cluster,
    tenant_cluster,
)

__all__ = [
    "Cluster",
    "KubeError",
    "PermanentKubeError",
    "TransientKubeError",
    "host_cluster",
    "tenant_cluster",
]
