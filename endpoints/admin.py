"""The Django admin for staff. Every save and bulk action goes through endpoints.actions, so
admin edits are checked and audited like API calls. Rows the workers own (endpoints, events,
usage) and the audit log are read-only here."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from . import actions as domain
from .exceptions import DomainError, ValidationFailed
from .models import (
    ApiToken,
    AuditEvent,
    Endpoint,
    EndpointEvent,
    EndpointUsage,
    GpuTier,
    Membership,
    Model,
    Quota,
    QuotaRequest,
    RuntimeImage,
    Template,
    Tenant,
)


def _form_errors(exc: ValidationFailed, form: forms.ModelForm) -> ValidationError:
    """Our field errors as a form error, on the fields the form shows."""
    return ValidationError(
        {(name if name in form.fields else None): messages for name, messages in exc.fields.items()}
        or exc.message
    )


def _bulk(modeladmin: admin.ModelAdmin, request, queryset, verb, done: str) -> None:
    """Run VERB on each row; report what worked and what was refused, with the reason."""
    ok = 0
    for obj in queryset:
        try:
            verb(request.user, obj)
            ok += 1
        except DomainError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
    if ok:
        modeladmin.message_user(request, f"{done} {ok} of {queryset.count()}.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ActionSaveAdmin(admin.ModelAdmin):
    """Adds through CREATE (an action taking the form's fields), edits through
    save_catalog_entry; deleting is left to the database's PROTECT rules."""

    create = None  # set in subclasses: the create_* action

    def save_model(self, request, obj, form, change) -> None:
        if change:
            domain.save_catalog_entry(request.user, obj)
            return
        fields = {
            f.name: form.cleaned_data[f.name]
            for f in obj._meta.concrete_fields
            if f.name in form.cleaned_data and f.editable
        }
        created = type(self).create(request.user, **fields)
        obj.pk = created.pk
        obj._state.adding = False


@admin.register(GpuTier)
class GpuTierAdmin(ActionSaveAdmin):
    create = staticmethod(domain.create_gpu_tier)
    list_display = [
        "name",
        "product",
        "gpu_memory_gib",
        "resource_name",
        "gpus_per_node",
        "price_per_gpu_hour",
    ]
    search_fields = ["name", "product"]


@admin.register(RuntimeImage)
class RuntimeImageAdmin(ActionSaveAdmin):
    create = staticmethod(domain.create_runtime_image)
    list_display = ["reference", "created"]
    search_fields = ["repository", "tag", "digest"]


@admin.register(Model)
class ModelAdmin(ActionSaveAdmin):
    create = staticmethod(domain.register_model)
    list_display = ["name", "source", "dtype", "parameters", "status", "decided_by", "decided_at"]
    list_filter = ["status", "dtype"]
    search_fields = ["name", "source"]
    readonly_fields = ["status", "requested_by", "decided_by", "decided_at", "decision_note", "created"]
    actions = ["approve", "reject", "retire"]

    @admin.action(description="Approve selected models")
    def approve(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.approve_model, "Approved")

    @admin.action(description="Reject selected models")
    def reject(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.reject_model, "Rejected")

    @admin.action(description="Retire selected models (flags their running endpoints)")
    def retire(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.retire_model, "Retired")


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = "__all__"  # noqa: DJ007 (the admin shows every field; serving ones read-only on change)

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is None and not self.errors:
            template = Template(**{k: value for k, value in cleaned.items() if k != "allowed_tenants"})
            try:
                domain.check_template(template)
            except ValidationFailed as exc:
                raise _form_errors(exc, self) from None
        return cleaned


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    form = TemplateForm
    list_display = [
        "name",
        "model",
        "tier",
        "gpus_per_replica",
        "max_model_len",
        "workload_class",
        "tenant_restricted",
    ]
    list_filter = ["tier", "workload_class", "tenant_restricted"]
    search_fields = ["name", "model__name"]
    filter_horizontal = ["allowed_tenants"]
    readonly_fields = ["capacity", "created_by", "created"]

    def get_readonly_fields(self, request, obj=None):
        fixed = list(Template.SERVING_FIELDS) if obj is not None else []
        return [*fixed, *self.readonly_fields]

    @admin.display(description="Capacity fit")
    def capacity(self, obj: Template) -> str:
        if obj.pk is None:
            return "-"
        fit = obj.fit()
        return (
            f"weights {fit.as_dict()['weights_gib']} GiB, KV cache {fit.as_dict()['kv_cache_gib']} GiB "
            f"({fit.kv_tokens} tokens), {fit.sequences_at_max_len} sequences of {fit.max_model_len} tokens"
        )

    def save_model(self, request, obj, form, change) -> None:
        if change:
            domain.save_catalog_entry(request.user, obj)
            return
        fields = {f: form.cleaned_data[f] for f in form.cleaned_data if f not in ("allowed_tenants",)}
        created = domain.create_template(
            request.user, allowed_tenants=form.cleaned_data.get("allowed_tenants", []), **fields
        )
        obj.pk = created.pk
        obj._state.adding = False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    readonly_fields = ["user", "role", "created"]
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # members are managed in the Memberships admin, through the actions


@admin.register(Tenant)
class TenantAdmin(ActionSaveAdmin):
    create = staticmethod(domain.create_tenant)
    list_display = ["slug", "name", "created"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]

    def get_readonly_fields(self, request, obj=None):
        return ["slug"] if obj is not None else []


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["tenant", "user", "role", "created"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__slug"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "user"] if obj is not None else []

    def save_model(self, request, obj, form, change) -> None:
        if change:
            domain.change_member_role(request.user, obj, form.cleaned_data["role"])
            return
        created = domain.add_member(request.user, obj.tenant, obj.user, obj.role)
        obj.pk = created.pk
        obj._state.adding = False

    def delete_model(self, request, obj) -> None:
        domain.remove_member(request.user, obj)

    def delete_queryset(self, request, queryset) -> None:
        for membership in queryset:
            domain.remove_member(request.user, membership)


class QuotaForm(forms.ModelForm):
    class Meta:
        model = Quota
        fields = ["gpus_total", "tier_gpus", "max_endpoints", "max_replicas"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    form = QuotaForm
    list_display = ["tenant", "gpus_total", "tier_gpus", "max_endpoints", "max_replicas", "updated"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # every tenant gets one when created

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        domain.set_quota(request.user, obj.tenant, **form.cleaned_data)


@admin.register(QuotaRequest)
class QuotaRequestAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "gpus_total", "tier_gpus", "max_endpoints", "max_replicas", "status", "created"]
    list_filter = ["status", "tenant"]
    actions = ["approve", "reject"]

    @admin.action(description="Approve selected quota requests (raises the quotas)")
    def approve(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.approve_quota_request, "Approved")

    @admin.action(description="Reject selected quota requests")
    def reject(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.reject_quota_request, "Rejected")


class EndpointEventInline(admin.TabularInline):
    model = EndpointEvent
    extra = 0
    can_delete = False
    readonly_fields = ["created", "type", "reason", "message"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Endpoint)
class EndpointAdmin(ReadOnlyAdmin):
    list_display = ["name", "tenant", "template", "phase", "min_replicas", "max_replicas", "url", "updated"]
    list_filter = ["phase", "tenant", "template__tier"]
    search_fields = ["name", "tenant__slug"]
    inlines = [EndpointEventInline]


@admin.register(EndpointUsage)
class EndpointUsageAdmin(ReadOnlyAdmin):
    list_display = [
        "endpoint",
        "replicas",
        "gpus_per_replica",
        "price_per_gpu_hour",
        "started_at",
        "ended_at",
    ]
    list_filter = ["tier"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "user", "display_prefix", "created", "last_used_at", "expires_at", "revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    exclude = ["secret_hash"]
    actions = ["revoke"]

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset) -> None:
        _bulk(self, request, queryset, domain.revoke_api_token, "Revoked")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created", "actor_name", "verb", "object_type", "object_id", "tenant"]
    list_filter = ["verb", "object_type", "tenant"]
    search_fields = ["actor_name", "object_id"]
