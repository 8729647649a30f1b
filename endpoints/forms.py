"""Forms for the pages: they parse what a person typed into Python values; the actions decide
whether it is allowed (quota, template policy, names) and their field-named errors are put back
next to the fields here (``add_domain_error``)."""

from __future__ import annotations

from django import forms

from endpoints import naming
from endpoints import validators as v
from endpoints.exceptions import DomainError
from endpoints.models import GpuTier, Template

MESSAGES = {
    "required": "This field is required.",
    "invalid": "Enter a whole number.",
}


def add_domain_error(form: forms.Form, exc: DomainError) -> None:
    """Put EXC's field-named messages next to their fields (the rest at the top of the form)."""
    placed = False
    for field, messages in exc.fields.items():
        target = field.split(".", 1)[0]
        target = target if target in form.fields else None
        for message in messages:
            form.add_error(target, _next_to(form, target, message))
            placed = True
    if not placed:
        form.add_error(None, _sentence(exc.message))


def _next_to(form: forms.Form, field: str | None, message: str) -> str:
    """Domain messages read after the field's name ("must be at most 40 characters"): next to a
    field, they get its label in front ("Max replicas must be ..."); at the top, a capital."""
    message = message.strip()
    if field is not None and message[:1].islower():
        label = form.fields[field].label or field.replace("_", " ").capitalize()
        return f"{label} {message}"
    return _sentence(message)


def _sentence(message: str) -> str:
    message = message.strip()
    return message[:1].upper() + message[1:] if message else message


def replicas_field(low: int, label: str, help_text: str = "") -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        min_value=low,
        max_value=v.MAX_REPLICAS,
        help_text=help_text,
        error_messages={
            **MESSAGES,
            "min_value": f"Must be at least {low}.",
            "max_value": f"Must be at most {v.MAX_REPLICAS}.",
        },
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )


class TemplateChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Template) -> str:
        return f"{obj.name} — {obj.model.name} on {obj.tier.name}"


class EndpointRequestForm(forms.Form):
    template = TemplateChoice(
        queryset=Template.objects.none(),
        to_field_name="name",
        empty_label=None,
        error_messages={"invalid_choice": "Pick one of the templates in the list."},
    )
    name = forms.CharField(
        max_length=naming.MAX_ENDPOINT_NAME_LENGTH,
        validators=[v.validate_endpoint_name],
        help_text=f"Lowercase letters, digits and '-', starting with a letter; at most "
        f"{naming.MAX_ENDPOINT_NAME_LENGTH} characters. It becomes part of the endpoint's URL.",
        error_messages={
            **MESSAGES,
            "max_length": f"Must be at most {naming.MAX_ENDPOINT_NAME_LENGTH} characters.",
        },
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none"}
        ),
    )
    min_replicas = replicas_field(0, "Min replicas", "Replicas kept running even when idle.")
    max_replicas = replicas_field(1, "Max replicas", "The autoscaler adds replicas up to this under load.")

    def __init__(self, *args, templates, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = templates


class ScaleForm(forms.Form):
    min_replicas = replicas_field(0, "Min replicas")
    max_replicas = replicas_field(1, "Max replicas")


class KeyForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        label="Key name",
        help_text="Who or what uses it, e.g. 'support-bot prod'.",
        error_messages={**MESSAGES, "max_length": "Must be at most 64 characters."},
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class DecisionForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=v.MAX_TEXT,
        label="Comment",
        widget=forms.TextInput(attrs={"placeholder": "Optional; the requester sees it"}),
    )


class QuotaRequestForm(forms.Form):
    """Ask for new limits; empty fields keep the current limit. One GPU field per tier."""

    gpus_total = forms.IntegerField(
        required=False, min_value=0, max_value=v.MAX_QUOTA_GPUS, label="GPUs in total"
    )
    max_endpoints = forms.IntegerField(
        required=False, min_value=0, max_value=v.MAX_QUOTA_ENDPOINTS, label="Endpoints"
    )
    max_replicas = forms.IntegerField(
        required=False, min_value=0, max_value=v.MAX_QUOTA_REPLICAS, label="Replicas (sum of max)"
    )
    reason = forms.CharField(
        max_length=v.MAX_TEXT,
        label="Reason",
        help_text="What the quota is for, so staff can decide without asking back.",
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Say what the quota is for."},
    )

    def __init__(self, *args, tiers: list[GpuTier], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tier_fields: list[tuple[GpuTier, str]] = []
        for tier in tiers:
            key = f"tier__{tier.name}"
            self.fields[key] = forms.IntegerField(
                required=False, min_value=0, max_value=v.MAX_QUOTA_GPUS, label=f"GPUs on {tier.name}"
            )
            self.tier_fields.append((tier, key))

    @property
    def tier_bound_fields(self):
        return [(tier, self[key]) for tier, key in self.tier_fields]

    def request_kwargs(self) -> dict:
        data = self.cleaned_data
        return {
            "reason": data["reason"],
            "gpus_total": data.get("gpus_total"),
            "max_endpoints": data.get("max_endpoints"),
            "max_replicas": data.get("max_replicas"),
            "tier_gpus": {
                tier.name: data[key] for tier, key in self.tier_fields if data.get(key) is not None
            },
        }
