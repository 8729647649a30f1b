"""Viewsets: parse, scope with ``for_user``, call one action, shape the answer.

Objects outside the caller's tenants are not in their querysets, so they answer 404. Role
checks (viewer, member, owner, staff) live in the actions, which raise NotAllowed (403).
"""

from __future__ import annotations

from django.db.models import prefetch_related_objects
from django.shortcuts import get_object_or_404
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

from endpoints import actions, dashboards
from endpoints.choices import EndpointPhase
from endpoints.models import (
    ApiToken,
    Endpoint,
    EndpointEvent,
    EndpointKey,
    GpuTier,
    Membership,
    Model,
    Quota,
    QuotaRequest,
    RuntimeImage,
    Template,
    Tenant,
)

from . import serializers as s
from .filtersets import EndpointFilterSet, ModelFilterSet, QuotaRequestFilterSet, TemplateFilterSet
from .idempotency import HEADER, idempotent

WINDOW = OpenApiParameter(
    "window",
    OpenApiTypes.STR,
    OpenApiParameter.QUERY,
    enum=list(dashboards.WINDOWS),
    default=dashboards.DEFAULT_WINDOW,
    description="How far back to look.",
)


def metrics_window(request) -> str:
    """The validated ?window= of a metrics request (400 naming the field and the allowed values)."""
    params = s.MetricsQuerySerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data["window"]


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


IDEMPOTENCY_KEY = OpenApiParameter(
    HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Send the same key again to retry safely: the first response is replayed and nothing "
    "is created twice. Up to 255 characters; kept for 24 hours.",
)


class PortalAutoSchema(AutoSchema):
    """Documents the Idempotency-Key header on every POST."""

    def get_override_parameters(self):
        parameters = super().get_override_parameters()
        return [*parameters, IDEMPOTENCY_KEY] if self.method == "POST" else parameters


class IsStaffOrReadOnly(permissions.BasePermission):
    message = "only staff may change the catalog"

    def has_permission(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or bool(request.user and request.user.is_staff)


class PortalViewSet(viewsets.GenericViewSet):
    pagination_class = Pagination
    schema = PortalAutoSchema()

    def respond(self, obj, status_code: int = status.HTTP_200_OK, serializer_class=None) -> Response:
        serializer_class = serializer_class or self.get_serializer_class()
        return Response(serializer_class(obj, context=self.get_serializer_context()).data, status=status_code)

    def valid_data(self, serializer_class=None, **kwargs) -> dict:
        serializer_class = serializer_class or self.get_serializer_class()
        serializer = serializer_class(data=self.request.data, context=self.get_serializer_context(), **kwargs)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


# Catalog ------------------------------------------------------------------------------------


class GpuTierViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """GPU tiers. Everyone reads; staff add."""

    queryset = GpuTier.objects.all()
    serializer_class = s.GpuTierSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    lookup_field = "name"

    @idempotent
    def create(self, request):
        tier = actions.create_gpu_tier(request.user, **self.valid_data())
        return self.respond(tier, status.HTTP_201_CREATED)


class RuntimeImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Pinned serving images. Everyone reads; staff add."""

    queryset = RuntimeImage.objects.all()
    serializer_class = s.RuntimeImageSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]

    @idempotent
    def create(self, request):
        image = actions.create_runtime_image(request.user, **self.valid_data())
        return self.respond(image, status.HTTP_201_CREATED)


class ModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Catalog models. Tenants read approved and retired ones; staff add, approve, reject, retire."""

    serializer_class = s.ModelSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    filterset_class = ModelFilterSet

    def get_queryset(self):
        return Model.objects.for_user(self.request.user).select_related("requested_by", "decided_by")

    @idempotent
    def create(self, request):
        model = actions.register_model(request.user, **self.valid_data())
        return self.respond(model, status.HTTP_201_CREATED)

    def _decide(self, request, decide) -> Response:
        note = self.valid_data(s.DecisionSerializer)["note"]
        return self.respond(decide(request.user, self.get_object(), note))

    @extend_schema(request=s.DecisionSerializer, responses=s.ModelSerializer)
    @action(detail=True, methods=["post"])
    @idempotent
    def approve(self, request, pk=None):
        return self._decide(request, actions.approve_model)

    @extend_schema(request=s.DecisionSerializer, responses=s.ModelSerializer)
    @action(detail=True, methods=["post"])
    @idempotent
    def reject(self, request, pk=None):
        return self._decide(request, actions.reject_model)

    @extend_schema(request=s.DecisionSerializer, responses=s.ModelSerializer)
    @action(detail=True, methods=["post"])
    @idempotent
    def retire(self, request, pk=None):
        return self._decide(request, actions.retire_model)


class TemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Templates, with their capacity fit and cost. Tenants read those open to them; staff add."""

    serializer_class = s.TemplateSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
    filterset_class = TemplateFilterSet
    lookup_field = "name"

    def get_queryset(self):
        return (
            Template.objects.for_user(self.request.user)
            .select_related("model", "tier", "image")
            .prefetch_related("allowed_tenants")
        )

    @idempotent
    def create(self, request):
        template = actions.create_template(request.user, **self.valid_data())
        return self.respond(self.get_queryset().get(pk=template.pk), status.HTTP_201_CREATED)


# Endpoints ----------------------------------------------------------------------------------


class EndpointViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Endpoints of your tenants. Lists leave deleted endpoints out unless you filter by phase."""

    serializer_class = s.EndpointSerializer
    filterset_class = EndpointFilterSet

    def get_serializer_class(self):
        # The detail adds the cold-start breakdown, which reads the timeline: not for every list row.
        return s.EndpointDetailSerializer if self.action == "retrieve" else s.EndpointSerializer

    def get_queryset(self):
        queryset = (
            Endpoint.objects.for_user(self.request.user)
            .select_related("tenant", "template__tier", "template__model", "template__image")
            .prefetch_related("usage")
        )
        if self.action == "list" and "phase" not in self.request.query_params:
            queryset = queryset.exclude(phase=EndpointPhase.DELETED)
        return queryset

    @idempotent
    def create(self, request):
        data = self.valid_data()
        endpoint = actions.request_endpoint(
            request.user,
            tenant=data["tenant"],
            template=data["template"],
            name=data["name"],
            min_replicas=data.get("min_replicas"),
            max_replicas=data.get("max_replicas"),
        )
        # The new row with the tenant, template, tier, image and model it was admitted with: only
        # its (empty) usage is left to read for the response.
        prefetch_related_objects([endpoint], "usage")
        return self.respond(endpoint, status.HTTP_201_CREATED)

    @extend_schema(responses={202: s.EndpointSerializer})
    def destroy(self, request, pk=None):
        endpoint = actions.delete_endpoint(request.user, self.get_object())
        return self.respond(self.get_queryset().get(pk=endpoint.pk), status.HTTP_202_ACCEPTED)

    @extend_schema(request=s.ScaleSerializer, responses=s.EndpointSerializer)
    @action(detail=True, methods=["post"])
    @idempotent
    def scale(self, request, pk=None):
        data = self.valid_data(s.ScaleSerializer)
        endpoint = actions.scale_endpoint(request.user, self.get_object(), **data)
        return self.respond(self.get_queryset().get(pk=endpoint.pk))

    @extend_schema(request=None, responses=s.EndpointSerializer)
    @action(detail=True, methods=["post"])
    @idempotent
    def redeploy(self, request, pk=None):
        """Try a failed endpoint again."""
        endpoint = actions.redeploy_endpoint(request.user, self.get_object())
        return self.respond(self.get_queryset().get(pk=endpoint.pk))

    @extend_schema(responses=s.EndpointEventSerializer(many=True))
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=Pagination)
    def events(self, request, pk=None):
        """The endpoint's timeline, oldest first."""
        events = EndpointEvent.objects.filter(endpoint=self.get_object()).order_by("created", "id")
        page = self.paginate_queryset(events)
        return self.get_paginated_response(s.EndpointEventSerializer(page, many=True).data)

    @extend_schema(parameters=[WINDOW], responses=s.DashboardSerializer)
    @action(detail=True, methods=["get"], filterset_class=None)
    def metrics(self, request, pk=None):
        """How the endpoint serves, from Prometheus: TTFT, TPOT, requests and errors, tokens/s,
        queue depth and KV cache use over the window. When Prometheus is down or has no data yet,
        `available` is false and `message` says why (still 200)."""
        endpoint = self.get_object()
        return Response(
            s.DashboardSerializer(dashboards.endpoint_dashboard(endpoint, metrics_window(request))).data
        )


class EndpointKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Keys for calling one endpoint (Authorization: Bearer <key>). The key is in the create
    response only; DELETE revokes it. Members create and revoke; viewers list."""

    serializer_class = s.EndpointKeySerializer

    def get_endpoint(self) -> Endpoint:
        return get_object_or_404(Endpoint.objects.for_user(self.request.user), pk=self.kwargs["endpoint_pk"])

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return EndpointKey.objects.none()
        return EndpointKey.objects.filter(endpoint=self.get_endpoint()).select_related("endpoint__tenant")

    @extend_schema(responses={201: s.NewEndpointKeySerializer})
    @idempotent(redact=("key",))
    def create(self, request, endpoint_pk=None):
        data = self.valid_data()
        issued = actions.create_endpoint_key(request.user, self.get_endpoint(), name=data["name"])
        issued.key.key = issued.raw  # for this one response
        return self.respond(issued.key, status.HTTP_201_CREATED, s.NewEndpointKeySerializer)

    def destroy(self, request, endpoint_pk=None, pk=None):
        actions.revoke_endpoint_key(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


# Tenants, members, quotas -------------------------------------------------------------------


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Your tenants, with your role and what they have spent. Staff create tenants."""

    serializer_class = s.TenantSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return Tenant.objects.for_user(self.request.user)

    @idempotent
    def create(self, request):
        tenant = actions.create_tenant(request.user, **self.valid_data())
        return self.respond(tenant, status.HTTP_201_CREATED)

    @extend_schema(responses={202: s.TenantSerializer})
    def destroy(self, request, slug=None):
        """Delete the tenant (staff): its endpoints drain and go, then its tenant cluster."""
        tenant = actions.delete_tenant(request.user, self.get_object())
        return self.respond(tenant, status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[WINDOW], responses=s.DashboardSerializer)
    @action(detail=True, methods=["get"])
    def metrics(self, request, slug=None):
        """How all of the tenant's endpoints serve together, from Prometheus (as an endpoint's
        metrics)."""
        tenant = self.get_object()
        return Response(
            s.DashboardSerializer(dashboards.tenant_dashboard(tenant, metrics_window(request))).data
        )


class MembershipViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Members of one tenant. Everyone in the tenant reads; owners add, change and remove."""

    serializer_class = s.MembershipSerializer
    lookup_field = "user__username"
    lookup_url_kwarg = "username"
    lookup_value_regex = r"[\w.@+-]+"

    def get_tenant(self) -> Tenant:
        return get_object_or_404(Tenant.objects.for_user(self.request.user), slug=self.kwargs["tenant_slug"])

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return Membership.objects.filter(tenant=self.get_tenant()).select_related("user", "tenant")

    @idempotent
    def create(self, request, tenant_slug=None):
        data = self.valid_data()
        membership = actions.add_member(
            request.user, self.get_tenant(), data["user"], data.get("role", "member")
        )
        return self.respond(membership, status.HTTP_201_CREATED)

    @extend_schema(request=s.MembershipRoleSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request, tenant_slug=None, username=None):
        role = self.valid_data(s.MembershipRoleSerializer)["role"]
        return self.respond(actions.change_member_role(request.user, self.get_object(), role))

    def destroy(self, request, tenant_slug=None, username=None):
        actions.remove_member(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class QuotaViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Your tenants' quotas and what is in use. Raise them with a quota request."""

    serializer_class = s.QuotaSerializer
    lookup_field = "tenant__slug"
    lookup_url_kwarg = "tenant"

    def get_queryset(self):
        return Quota.objects.for_user(self.request.user).select_related("tenant")


class QuotaRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Ask for more quota (owners and members); staff approve or reject."""

    serializer_class = s.QuotaRequestSerializer
    filterset_class = QuotaRequestFilterSet

    def get_queryset(self):
        return QuotaRequest.objects.for_user(self.request.user).select_related(
            "tenant", "requested_by", "decided_by"
        )

    @idempotent
    def create(self, request):
        data = self.valid_data()
        tenant = data.pop("tenant")
        quota_request = actions.request_quota(request.user, tenant, **data)
        return self.respond(quota_request, status.HTTP_201_CREATED)

    def _decide(self, request, decide) -> Response:
        note = self.valid_data(s.DecisionSerializer)["note"]
        return self.respond(decide(request.user, self.get_object(), note))

    @extend_schema(request=s.DecisionSerializer, responses=s.QuotaRequestSerializer)
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAdminUser])
    @idempotent
    def approve(self, request, pk=None):
        return self._decide(request, actions.approve_quota_request)

    @extend_schema(request=s.DecisionSerializer, responses=s.QuotaRequestSerializer)
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAdminUser])
    @idempotent
    def reject(self, request, pk=None):
        return self._decide(request, actions.reject_quota_request)


# Tokens -------------------------------------------------------------------------------------


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PortalViewSet):
    """Your API tokens. The secret is in the create response only; DELETE revokes."""

    serializer_class = s.ApiTokenSerializer

    def get_queryset(self):
        return ApiToken.objects.for_user(self.request.user)

    @extend_schema(responses={201: s.NewApiTokenSerializer})
    @idempotent(redact=("secret",))
    def create(self, request):
        data = self.valid_data()
        issued = actions.issue_api_token(
            request.user, request.user, name=data["name"], expires_at=data.get("expires_at")
        )
        issued.token.secret = issued.secret  # for this one response
        return self.respond(issued.token, status.HTTP_201_CREATED, s.NewApiTokenSerializer)

    def destroy(self, request, pk=None):
        actions.revoke_api_token(request.user, self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
