from __future__ import annotations

from rest_framework.routers import DefaultRouter

from . import views

app_name = "api"

router = DefaultRouter()
router.register("gpu-tiers", views.GpuTierViewSet, basename="gpu-tier")
router.register("runtime-images", views.RuntimeImageViewSet, basename="runtime-image")
router.register("models", views.ModelViewSet, basename="model")
router.register("templates", views.TemplateViewSet, basename="template")
router.register("endpoints", views.EndpointViewSet, basename="endpoint")
router.register("quotas", views.QuotaViewSet, basename="quota")
router.register("quota-requests", views.QuotaRequestViewSet, basename="quota-request")
router.register("tenants", views.TenantViewSet, basename="tenant")
router.register(
    r"tenants/(?P<tenant_slug>[a-z][a-z0-9]*)/members", views.MembershipViewSet, basename="tenant-member"
)
router.register(r"endpoints/(?P<endpoint_pk>[0-9]+)/keys", views.EndpointKeyViewSet, basename="endpoint-key")
router.register("tokens", views.ApiTokenViewSet, basename="token")

urlpatterns = router.urls
