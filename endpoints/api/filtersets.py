from __future__ import annotations

import django_filters as filters

from endpoints.choices import Dtype, EndpointPhase, ModelStatus, QuotaRequestStatus, WorkloadClass
from endpoints.models import Endpoint, Model, QuotaRequest, Template


class EndpointFilterSet(filters.FilterSet):
    tenant = filters.CharFilter(field_name="tenant__slug", help_text="Tenant slug")
    # A column of the row itself, so no join can repeat a row: without distinct=False the filter
    # made every page a SELECT DISTINCT over all columns (the JSON conditions too).
    phase = filters.MultipleChoiceFilter(choices=EndpointPhase.choices, distinct=False)
    template = filters.CharFilter(field_name="template__name", help_text="Template name")
    tier = filters.CharFilter(field_name="template__tier__name", help_text="GPU tier name")
    name = filters.CharFilter(field_name="name")
    name_contains = filters.CharFilter(field_name="name", lookup_expr="contains")

    class Meta:
        model = Endpoint
        fields = ["tenant", "phase", "template", "tier", "name"]


class ModelFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=ModelStatus.choices)
    dtype = filters.ChoiceFilter(choices=Dtype.choices)

    class Meta:
        model = Model
        fields = ["status", "dtype"]


class TemplateFilterSet(filters.FilterSet):
    model = filters.NumberFilter(field_name="model_id")
    tier = filters.CharFilter(field_name="tier__name")
    workload_class = filters.ChoiceFilter(choices=WorkloadClass.choices)

    class Meta:
        model = Template
        fields = ["model", "tier", "workload_class"]


class QuotaRequestFilterSet(filters.FilterSet):
    tenant = filters.CharFilter(field_name="tenant__slug")
    status = filters.MultipleChoiceFilter(choices=QuotaRequestStatus.choices)

    class Meta:
        model = QuotaRequest
        fields = ["tenant", "status"]
