from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("tenant/", views.switch_tenant, name="switch-tenant"),
    path("catalog/", views.catalog, name="catalog"),
    path("endpoints/new/", views.endpoint_new, name="endpoint-new"),
    path("endpoints/new/preview/", views.endpoint_preview, name="endpoint-preview"),
    path("endpoints/<int:pk>/", views.endpoint_detail, name="endpoint"),
    path("endpoints/<int:pk>/status/", views.endpoint_status, name="endpoint-status"),
    path("endpoints/<int:pk>/metrics/", views.endpoint_metrics, name="endpoint-metrics"),
    path("endpoints/<int:pk>/scale/", views.endpoint_scale, name="endpoint-scale"),
    path("endpoints/<int:pk>/delete/", views.endpoint_delete, name="endpoint-delete"),
    path("endpoints/<int:pk>/redeploy/", views.endpoint_redeploy, name="endpoint-redeploy"),
    path("endpoints/<int:pk>/keys/", views.key_create, name="key-create"),
    path("endpoints/<int:pk>/keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("quota/", views.quota, name="quota"),
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/capacity/", views.approvals_capacity, name="approvals-capacity"),
    path("approvals/<str:kind>/<int:pk>/<str:verb>/", views.decide, name="decide"),
]
