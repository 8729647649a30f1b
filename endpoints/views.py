"""The portal's pages: parse, scope with ``for_user``, call one action, render.

Every query on a tenant's rows goes through ``for_user`` (another tenant's objects answer 404);
role checks live in the actions, which raise NotAllowed (403 here). The current tenant is kept
in the session and checked against the user's memberships on every request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, F, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from endpoints import actions, capacity, coldstart, dashboards
from endpoints.choices import (
    ACTIVE_PHASES,
    MODEL_VISIBLE_TO_TENANTS,
    SERVING_PHASES,
    STARTING_PHASES,
    ConditionStatus,
    ConditionType,
    EndpointPhase,
    ModelStatus,
    QuotaRequestStatus,
    Role,
)
from endpoints.exceptions import DomainError, NotAllowed, QuotaExceeded
from endpoints.forms import (
    DecisionForm,
    EndpointRequestForm,
    KeyForm,
    QuotaRequestForm,
    ScaleForm,
    add_domain_error,
)
from endpoints.models import (
    Endpoint,
    EndpointEvent,
    EndpointKey,
    GpuTier,
    Membership,
    Model,
    Quota,
    QuotaRequest,
    Template,
    Tenant,
    TenantCluster,
)

log = logging.getLogger(__name__)


SESSION_TENANT = "portal.tenant"
SWITCHER_LIMIT = 200  # staff see every tenant in the switcher, up to this many
PAGE_SIZE = 25
CHAT_TOKENS = 4096  # "up to N concurrent 4k-token chats"
P = EndpointPhase


# The current tenant ----------------------------------------------------------------------------


@dataclass
class Portal:
    """Who is looking, at which tenant, with which role; what the base layout needs."""

    user: object
    tenants: list[Tenant]
    tenant: Tenant | None
    role: Role | None
    roles: dict[int, Role] = field(default_factory=dict)

    @property
    def is_staff(self) -> bool:
        return bool(self.user.is_staff)

    @property
    def can_change(self) -> bool:
        """Whether the controls that change things are shown (the actions check again)."""
        return self.is_staff or (self.role is not None and self.role.includes(Role.MEMBER))

    @property
    def role_label(self) -> str:
        if self.role is not None:
            return self.role.label
        return "Staff" if self.is_staff else ""


def portal(request: HttpRequest, *, tenant: Tenant | None = None) -> Portal:
    """The request's Portal. TENANT (an object the user may see, e.g. the endpoint on the page)
    becomes the current tenant, so the layout and the page agree."""
    user = request.user
    memberships = list(Membership.objects.filter(user=user).select_related("tenant"))
    roles = {m.tenant_id: Role(m.role) for m in memberships}
    if user.is_staff:
        tenants = list(Tenant.objects.order_by("slug")[:SWITCHER_LIMIT])
    else:
        tenants = sorted((m.tenant for m in memberships), key=lambda t: t.slug)
    current = tenant
    if current is None:
        slug = request.session.get(SESSION_TENANT)
        current = next((t for t in tenants if t.slug == slug), None)
        if current is None and slug and user.is_staff:
            current = Tenant.objects.filter(slug=slug).first()
        if current is None:
            own = sorted((m.tenant for m in memberships), key=lambda t: t.slug)
            current = (own or tenants or [None])[0]
    if current is not None and request.session.get(SESSION_TENANT) != current.slug:
        request.session[SESSION_TENANT] = current.slug
    if current is not None and all(t.pk != current.pk for t in tenants):
        tenants = sorted([*tenants, current], key=lambda t: t.slug)
    return Portal(
        user=user,
        tenants=tenants,
        tenant=current,
        role=roles.get(current.pk) if current else None,
        roles=roles,
    )


def page(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    return render(request, template, context, status=status)


def need_tenant(request: HttpRequest, p: Portal) -> HttpResponse | None:
    if p.tenant is None:
        return page(request, "portal/no_tenant.html", {"portal": p})
    return None


@login_required
@require_POST
def switch_tenant(request: HttpRequest) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.for_user(request.user), slug=request.POST.get("tenant", ""))
    request.session[SESSION_TENANT] = tenant.slug
    target = request.POST.get("next") or reverse("home")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = reverse("home")
    if target.startswith("/endpoints/") and not target.startswith(reverse("endpoint-new")):
        target = reverse("home")  # an endpoint page belongs to the tenant being left
    return redirect(target)


# Tenant home -----------------------------------------------------------------------------------


def quota_bars(quota: Quota, usage: dict) -> list[dict]:
    """One bar per quota dimension: GPUs in total, per tier, endpoints, replicas."""
    bars = [{"label": "GPUs in total", "used": usage["gpus_total"], "limit": quota.gpus_total}]
    tiers = sorted(set(quota.tier_gpus) | set(usage["tier_gpus"]))
    for tier in tiers:
        bars.append(
            {
                "label": f"GPUs on {tier}",
                "tier": tier,
                "used": usage["tier_gpus"].get(tier, 0),
                "limit": quota.tier_gpus.get(tier, 0),
            }
        )
    bars.append({"label": "Endpoints", "used": usage["endpoints"], "limit": quota.max_endpoints})
    bars.append({"label": "Replicas (sum of max)", "used": usage["replicas"], "limit": quota.max_replicas})
    for bar in bars:
        bar["over"] = bar["used"] > bar["limit"]
        bar["full"] = bar["used"] >= bar["limit"]
        bar["percent"] = _percent(bar["used"], bar["limit"])
    return bars


def tenant_endpoints(request: HttpRequest, tenant: Tenant):
    return (
        Endpoint.objects.for_user(request.user)
        .filter(tenant=tenant)
        .exclude(phase=P.DELETED)
        .select_related("template__tier", "template__model")
    )


PHASE_FILTERS = {
    "serving": SERVING_PHASES,
    "starting": STARTING_PHASES,
    "failed": frozenset({P.FAILED}),
    "deleting": frozenset({P.DELETING}),
}


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    p = portal(request)
    if (response := need_tenant(request, p)) is not None:
        return response
    tenant = p.tenant
    endpoints = tenant_endpoints(request, tenant)
    counts = dict(endpoints.order_by().values_list("phase").annotate(n=Count("id")))
    query = request.GET.get("q", "").strip()[:40]
    show = request.GET.get("show", "")
    listed = endpoints.order_by("name", "id")
    if query:
        listed = listed.filter(name__icontains=query)
    if show in PHASE_FILTERS:
        listed = listed.filter(phase__in=PHASE_FILTERS[show])
    page_obj = Paginator(listed, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page_obj.object_list)
    for ep in rows:
        ep.cost = ep.forecast()
    quota = Quota.objects.for_user(request.user).get(tenant=tenant)
    usage = Endpoint.objects.live().filter(tenant=tenant).quota_usage()
    gpu_price = F("template__gpus_per_replica") * F("template__tier__price_per_gpu_hour")
    hourly = endpoints.filter(phase__in=ACTIVE_PHASES).aggregate(
        now=Sum(F("desired_replicas") * gpu_price),
        low=Sum(F("min_replicas") * gpu_price),
        high=Sum(F("max_replicas") * gpu_price),
    )
    events = (
        EndpointEvent.objects.for_user(request.user)
        .filter(endpoint__tenant=tenant)
        .select_related("endpoint")
        .order_by("-created", "-id")[:12]
    )
    summary = {
        "serving": sum(counts.get(ph, 0) for ph in SERVING_PHASES),
        "starting": sum(counts.get(ph, 0) for ph in STARTING_PHASES),
        "failed": counts.get(P.FAILED, 0),
        "deleting": counts.get(P.DELETING, 0),
        "total": sum(counts.values()),
    }
    monthly = {k: (v or Decimal(0)) * capacity.HOURS_PER_MONTH for k, v in hourly.items()}
    context = {
        "portal": p,
        "page_obj": page_obj,
        "rows": rows,
        "query": query,
        "show": show,
        "summary": summary,
        "monthly": monthly,
        "bars": quota_bars(quota, usage),
        "events": events,
        "polling": any(ep.phase in STARTING_PHASES or ep.phase == P.DELETING for ep in rows),
    }
    if request.htmx and request.htmx.target == "endpoint-list":
        return page(request, "portal/_endpoint_list.html", context)
    return page(request, "portal/home.html", context)


# Catalog ---------------------------------------------------------------------------------------


def available_templates(request: HttpRequest, tenant: Tenant):
    """Templates TENANT may request now: approved model, open to every tenant or to this one."""
    allowed = Template.allowed_tenants.through.objects.filter(tenant=tenant).values("template_id")
    return (
        Template.objects.for_user(request.user)
        .filter(model__status=ModelStatus.APPROVED)
        .filter(Q(tenant_restricted=False) | Q(pk__in=allowed))
        .select_related("model", "tier", "image")
        .order_by("name")
    )


def concurrent_chats(template: Template, fit: capacity.Fit) -> tuple[int, int]:
    """(chats, tokens): concurrent conversations of TOKENS tokens one replica holds in KV cache,
    capped by the template's max sequences (vLLM schedules no more at once)."""
    tokens = min(CHAT_TOKENS, template.max_model_len)
    return min(fit.kv_tokens // tokens if tokens else 0, template.max_num_seqs), tokens


# A first start's stages when nothing is cached: the figures are deliberately round, and the
# page says they are estimates. Weights are read from the hub or object store at about 500 MiB/s
# and loaded into GPU memory at about 2 GiB/s; a vLLM image is ~10 GB.
COLD_START_FIXED_SECONDS = {"scheduling": 10, "image pull": 60, "route and first token": 10}
DOWNLOAD_BYTES_PER_SECOND = 500 * 1024**2
LOAD_BYTES_PER_SECOND = 2 * 1024**3


def cold_start_estimate(template: Template, fit: capacity.Fit) -> dict:
    download = fit.weights_bytes / DOWNLOAD_BYTES_PER_SECOND
    load = fit.weights_bytes / LOAD_BYTES_PER_SECOND + 15  # + CUDA graphs and the KV cache profile
    parts = {**COLD_START_FIXED_SECONDS, "weight download": download, "model load": load}
    return {"seconds": sum(parts.values()), "parts": parts}


def describe_template(template: Template) -> dict:
    fit = template.fit()
    chats, chat_tokens = concurrent_chats(template, fit)
    return {
        "template": template,
        "fit": fit,
        "weights_gib": capacity.gib(fit.weights_bytes),
        "chats": chats,
        "chat_tokens": chat_tokens,
        "hourly_per_replica": capacity.hourly_rate(
            template.tier.price_per_gpu_hour, template.gpus_per_replica, 1
        ),
        "cold_start": cold_start_estimate(template, fit),
    }


@login_required
@require_GET
def catalog(request: HttpRequest) -> HttpResponse:
    p = portal(request)
    if (response := need_tenant(request, p)) is not None:
        return response
    cards = [describe_template(t) for t in available_templates(request, p.tenant)]
    return page(request, "portal/catalog.html", {"portal": p, "cards": cards})


# Request an endpoint ---------------------------------------------------------------------------

QUOTA_DIMENSIONS = {
    "gpus_total": "GPUs in total",
    "replicas": "Replicas (sum of max)",
    "endpoints": "Endpoints",
}


def dimension_label(dimension: str) -> str:
    if dimension.startswith("tier_gpus."):
        return f"GPUs on {dimension.split('.', 1)[1]}"
    return QUOTA_DIMENSIONS.get(dimension, dimension)


def quota_lines(tenant: Tenant, template: Template, max_replicas: int) -> list[dict]:
    """The quota after this request, per dimension, the way request_endpoint admits it."""
    quota = Quota.objects.get(tenant=tenant)
    used = Endpoint.objects.live().filter(tenant=tenant).quota_usage()
    gpus = max_replicas * template.gpus_per_replica
    tier = template.tier.name
    lines = [
        actions.QuotaLine("gpus_total", used["gpus_total"], gpus, quota.gpus_total),
        actions.QuotaLine(
            f"tier_gpus.{tier}", used["tier_gpus"].get(tier, 0), gpus, quota.tier_gpus.get(tier, 0)
        ),
        actions.QuotaLine("replicas", used["replicas"], max_replicas, quota.max_replicas),
        actions.QuotaLine("endpoints", used["endpoints"], 1, quota.max_endpoints),
    ]
    return [quota_line_view(line.as_dict()) for line in lines]


def quota_line_view(line: dict) -> dict:
    after = line["used"] + line["requested"]
    return {
        **line,
        "label": dimension_label(line["dimension"]),
        "after": after,
        "exceeded": after > line["limit"],
        "used_percent": _percent(line["used"], line["limit"]),
        "requested_percent": max(0, _percent(after, line["limit"]) - _percent(line["used"], line["limit"])),
    }


def _percent(value: int, limit: int) -> int:
    if limit <= 0:
        return 100 if value > 0 else 0
    return max(0, min(100, round(100 * value / limit)))


def _int(value, default: int | None = None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def preview_context(request: HttpRequest, tenant: Tenant, templates, data) -> dict:
    """The live preview: fit, quota after the request, monthly cost at min and max."""
    template = templates.filter(name=data.get("template", "")).first() if data.get("template") else None
    if template is None:
        return {"preview": None}
    low = _int(data.get("min_replicas"), template.min_replicas)
    high = _int(data.get("max_replicas"), max(low or 0, 1))
    problems = []
    if not template.min_replicas <= low <= template.max_replicas:
        problems.append(
            f"Min replicas must be between {template.min_replicas} and {template.max_replicas} for this template."
        )
    if not max(1, template.min_replicas) <= high <= template.max_replicas:
        problems.append(
            f"Max replicas must be between {max(1, template.min_replicas)} and {template.max_replicas} for this template."
        )
    if low > high:
        problems.append("Min replicas must be at most max replicas.")
    low_c, high_c = max(0, low), max(0, min(high, template.max_replicas * 4))
    described = describe_template(template)
    lines = quota_lines(tenant, template, high_c)
    return {
        "preview": {
            **described,
            "min": low,
            "max": high,
            "problems": problems,
            "cost": template.forecast(low_c, high_c),
            "lines": lines,
            "over": [line for line in lines if line["exceeded"]],
            "total_chats_at_max": described["chats"] * high_c,
        }
    }


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_new(request: HttpRequest) -> HttpResponse:
    p = portal(request)
    if (response := need_tenant(request, p)) is not None:
        return response
    templates = available_templates(request, p.tenant)
    over_quota = None
    if request.method == "POST":
        form = EndpointRequestForm(request.POST, templates=templates)
        if form.is_valid():
            data = form.cleaned_data
            try:
                endpoint = actions.request_endpoint(
                    request.user,
                    tenant=p.tenant,
                    template=data["template"],
                    name=data["name"],
                    min_replicas=data["min_replicas"],
                    max_replicas=data["max_replicas"],
                )
            except NotAllowed as exc:
                raise PermissionDenied(exc.message) from None
            except QuotaExceeded as exc:
                # The numbers are in the box above the form; next to the field, what to change.
                over_quota = [quota_line_view(line) for line in exc.details.get("exceeded", [])]
                form.add_error("max_replicas", "Max replicas would go over the tenant's quota (see above).")
            except DomainError as exc:
                add_domain_error(form, exc)
            else:
                messages.success(
                    request, f"Endpoint {endpoint.name} requested. This page follows it until it serves."
                )
                return redirect("endpoint", pk=endpoint.pk)
        data = request.POST
    else:
        first = templates.filter(name=request.GET.get("template", "")).first() or templates.first()
        initial = {}
        if first is not None:
            initial = {
                "template": first.name,
                "min_replicas": first.min_replicas,
                "max_replicas": max(first.min_replicas, 1),
            }
        form = EndpointRequestForm(initial=initial, templates=templates)
        data = initial
    context = {
        "portal": p,
        "form": form,
        "over_quota": over_quota,
        "has_templates": templates.exists(),
        **preview_context(request, p.tenant, templates, data),
    }
    return page(request, "portal/endpoint_new.html", context)


@login_required
@require_GET
def endpoint_preview(request: HttpRequest) -> HttpResponse:
    p = portal(request)
    if p.tenant is None:
        raise Http404("no tenant")
    context = preview_context(request, p.tenant, available_templates(request, p.tenant), request.GET)
    return page(request, "portal/_preview.html", {"portal": p, **context})


# Endpoint page ---------------------------------------------------------------------------------

# Where each phase sits on the overall progress bar (workers/status.py writes load_progress so).
STAGE_SPANS = {
    P.PROVISIONING_TENANT: (0, 10),
    P.SCHEDULING: (10, 20),
    P.PULLING: (20, 30),
    P.DOWNLOADING_WEIGHTS: (30, 70),
    P.LOADING_MODEL: (70, 95),
    P.VERIFYING: (95, 99),
}
# Phase reasons the workers and actions write when nothing is wrong; any other reason names a problem.
NORMAL_REASONS = {"".join(w.capitalize() for w in ph.split("_")) for ph in P.values} | {
    "",
    "Requested",
    "RedeployRequested",
    "DeleteRequested",
    "Scaled",
    "TenantClusterReady",
}


def timeline(endpoint: Endpoint) -> dict:
    """The provisioning stages (coldstart.breakdown: state and seconds of each) and the bar for
    the stage in progress."""
    cold = coldstart.breakdown(endpoint)
    now = timezone.now()
    stages = []
    active = None
    for stage in cold.stages:
        state = {"in_progress": "active", "stopped": "waiting", "pending": "waiting"}.get(
            stage.state, stage.state
        )
        row = {
            "key": stage.key,
            "label": stage.label,
            "state": state,
            "seconds": stage.seconds,
            "elapsed": (now - stage.start).total_seconds() if stage.start and stage.seconds is None else None,
        }
        if state in ("active", "failed") and active is None:
            active = row
        stages.append(row)
    phase = endpoint.phase
    progress = 100 if phase in SERVING_PHASES else (endpoint.load_progress or 0)
    stage_percent = None
    if phase in STAGE_SPANS:
        # The overall figure never contradicts the phase: a late log line can carry a figure of an
        # earlier stage (the watcher keeps the phase from stepping back, not the figure).
        low, high = STAGE_SPANS[phase]
        progress = max(progress, low)
        if endpoint.load_progress is not None:
            stage_percent = max(0, min(100, round(100 * (endpoint.load_progress - low) / (high - low))))
    return {
        "stages": stages,
        "total_seconds": cold.total_seconds,
        "active": active,
        "progress": progress,
        "stage_percent": stage_percent,
        "in_stage_seconds": active["elapsed"] if active and active["elapsed"] is not None else None,
    }


def problems(endpoint: Endpoint) -> list[dict]:
    """What is wrong, in plain words with the fix (the workers write both into the phase message)."""
    found = []
    if endpoint.phase in (P.FAILED, P.DEGRADED) or endpoint.phase_reason not in NORMAL_REASONS:
        if endpoint.phase_message:
            found.append(
                {"reason": endpoint.phase_reason or endpoint.phase, "message": endpoint.phase_message}
            )
    retired = endpoint.condition(ConditionType.MODEL_RETIRED)
    if retired and retired.get("status") == ConditionStatus.TRUE:
        found.append({"reason": "ModelRetired", "message": retired.get("message", "")})
    return found


ROUTE_CONDITIONS = [("RouteAccepted", "Accepted"), ("RouteResolvedRefs", "ResolvedRefs")]
OTHER_CONDITIONS = [
    ("TenantReady", "Tenant cluster ready"),
    ("Scheduled", "Scheduled on a GPU node"),
    ("ModelLoaded", "Model loaded"),
    ("Ready", "Answering requests"),
]


def conditions(endpoint: Endpoint, wanted: list[tuple[str, str]]) -> list[dict]:
    out = []
    for ctype, label in wanted:
        cond = endpoint.condition(ctype) or {}
        out.append(
            {
                "type": ctype,
                "label": label,
                "status": cond.get("status", "Unknown"),
                "reason": cond.get("reason", ""),
                "message": cond.get("message", ""),
                "since": cond.get("last_transition_time"),
            }
        )
    return out


def status_context(endpoint: Endpoint) -> dict:
    return {
        "endpoint": endpoint,
        "timeline": timeline(endpoint),
        "problems": problems(endpoint),
        "route_conditions": conditions(endpoint, ROUTE_CONDITIONS),
        "other_conditions": conditions(endpoint, OTHER_CONDITIONS),
        "polling": endpoint.phase in STARTING_PHASES or endpoint.phase == P.DELETING,
    }


def endpoint_for(request: HttpRequest, pk: int) -> Endpoint:
    return get_object_or_404(
        Endpoint.objects.for_user(request.user).select_related(
            "tenant", "template__tier", "template__model", "template__image"
        ),
        pk=pk,
    )


def dashboard_windows() -> list[str]:
    return list(dashboards.WINDOWS)


def endpoint_context(request: HttpRequest, endpoint: Endpoint, p: Portal, **extra) -> dict:
    keys = list(
        EndpointKey.objects.for_user(request.user).filter(endpoint=endpoint).order_by("-created", "-id")[:40]
    )
    events = list(
        EndpointEvent.objects.for_user(request.user)
        .filter(endpoint=endpoint)
        .order_by("-created", "-id")[:30]
    )
    windows = dashboard_windows()
    return {
        "portal": p,
        "endpoint": endpoint,
        "cost": endpoint.forecast(),
        "active_keys": [k for k in keys if k.revoked_at is None],
        "revoked_keys": [k for k in keys if k.revoked_at is not None][:10],
        "events": events,
        "windows": windows,
        "window": dashboards.DEFAULT_WINDOW,
        "scale_form": extra.pop("scale_form", None)
        or ScaleForm(initial={"min_replicas": endpoint.min_replicas, "max_replicas": endpoint.max_replicas}),
        "key_form": extra.pop("key_form", None) or KeyForm(),
        "model_name": endpoint.name,
        **status_context(endpoint),
        **extra,
    }


@login_required
@require_GET
def endpoint_detail(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk)
    p = portal(request, tenant=endpoint.tenant)
    return page(request, "portal/endpoint.html", endpoint_context(request, endpoint, p))


@login_required
@require_GET
def endpoint_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the endpoint page (htmx polls it every 2 s until the endpoint settles)."""
    endpoint = endpoint_for(request, pk)
    context = status_context(endpoint)
    # The "Call it" card changes only when the URL does; swapping it then keeps the tab a reader chose.
    url_changed = request.GET.get("url", "") != endpoint.url
    return page(
        request,
        "portal/_status.html",
        {**context, "oob": True, "url_changed": url_changed, "model_name": endpoint.name},
    )


# The serving dashboard's charts: which figures share a chart.
PANELS = [
    ("ttft", "Time to first token", ["ttft_p50", "ttft_p95", "ttft_p99"]),
    ("tpot", "Time per output token", ["tpot_p50", "tpot_p95"]),
    ("tokens", "Tokens per second", ["prompt_tokens_per_second", "generation_tokens_per_second"]),
    ("requests", "Request rate", ["request_rate"]),
    ("errors", "Errors (share of requests)", ["error_rate"]),
    ("queue", "Queue depth", ["queue_depth", "running_requests"]),
    ("kv", "KV cache usage (fullest replica)", ["kv_cache_usage"]),
]
SERIES_LABELS = {
    "ttft_p50": "p50",
    "ttft_p95": "p95",
    "ttft_p99": "p99",
    "tpot_p50": "p50",
    "tpot_p95": "p95",
    "prompt_tokens_per_second": "in",
    "generation_tokens_per_second": "out",
    "queue_depth": "waiting",
    "running_requests": "running",
}


def chart_payload(board) -> dict:
    """A Dashboard as the page's charts read it (static/portal/charts.js): panels of series of
    [epoch seconds, value] points."""
    panels = []
    for key, title, keys in PANELS:
        series = [s for s in (board.get(k) for k in keys) if s is not None]
        if not series:
            continue
        panels.append(
            {
                "key": key,
                "title": title,
                "unit": series[0].unit,
                "series": [
                    {
                        "label": SERIES_LABELS.get(s.key, s.label),
                        "current": s.current,
                        "points": [[round(p.time.timestamp()), p.value] for p in s.points],
                    }
                    for s in series
                ],
            }
        )
    return {
        "window": board.window,
        "start": round(board.start.timestamp()),
        "end": round(board.end.timestamp()),
        "status": board.status,
        "available": board.available,
        "message": board.message,
        "panels": panels if board.available or board.status == "no_data" else [],
    }


@login_required
@require_GET
def endpoint_metrics(request: HttpRequest, pk: int) -> JsonResponse:
    """The serving dashboard's data, drawn by the page's charts."""
    endpoint = endpoint_for(request, pk)
    window = request.GET.get("window") or dashboards.DEFAULT_WINDOW
    if window not in dashboards.WINDOWS:
        return JsonResponse({"error": f"window must be one of {', '.join(dashboards.WINDOWS)}"}, status=400)
    return JsonResponse(chart_payload(dashboards.endpoint_dashboard(endpoint, window)))


def _change(request: HttpRequest, endpoint: Endpoint, do):
    """Call an action for a person; NotAllowed becomes 403 (viewers see the page, never the change)."""
    try:
        return do()
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None


@login_required
@require_POST
def endpoint_scale(request: HttpRequest, pk: int) -> HttpResponse:
    """Step one shows what the new range means (cost, quota); step two (confirm=yes) does it."""
    endpoint = endpoint_for(request, pk)
    p = portal(request, tenant=endpoint.tenant)
    if not p.can_change:
        raise PermissionDenied("viewers cannot scale endpoints")
    form = ScaleForm(request.POST)
    if form.is_valid():
        low, high = form.cleaned_data["min_replicas"], form.cleaned_data["max_replicas"]
        if request.POST.get("confirm") == "yes":
            try:
                _change(
                    request,
                    endpoint,
                    lambda: actions.scale_endpoint(
                        request.user, endpoint, min_replicas=low, max_replicas=high
                    ),
                )
            except DomainError as exc:
                add_domain_error(form, exc)
            else:
                messages.success(request, f"Replica range of {endpoint.name} is now {low}–{high}.")
                return redirect("endpoint", pk=endpoint.pk)
        else:
            return page(
                request,
                "portal/confirm_scale.html",
                {
                    "portal": p,
                    "endpoint": endpoint,
                    "low": low,
                    "high": high,
                    "before": endpoint.forecast(),
                    "after": endpoint.template.forecast(low, high),
                },
            )
    context = endpoint_context(request, endpoint, p, scale_form=form, scale_open=True)
    return page(request, "portal/endpoint.html", context, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_delete(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk)
    p = portal(request, tenant=endpoint.tenant)
    if not p.can_change:
        raise PermissionDenied("viewers cannot delete endpoints")
    if request.method == "POST":
        _change(request, endpoint, lambda: actions.delete_endpoint(request.user, endpoint))
        messages.success(request, f"Deleting {endpoint.name}. Its GPUs are released once its pods are gone.")
        return redirect("endpoint", pk=endpoint.pk)
    return page(
        request,
        "portal/confirm_delete.html",
        {"portal": p, "endpoint": endpoint, "cost": endpoint.forecast()},
    )


@login_required
@require_POST
def endpoint_redeploy(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk)
    try:
        _change(request, endpoint, lambda: actions.redeploy_endpoint(request.user, endpoint))
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Trying {endpoint.name} again.")
    return redirect("endpoint", pk=endpoint.pk)


@login_required
@require_POST
def key_create(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk)
    p = portal(request, tenant=endpoint.tenant)
    form = KeyForm(request.POST)
    new_key = None
    if form.is_valid():
        try:
            issued = _change(
                request,
                endpoint,
                lambda: actions.create_endpoint_key(request.user, endpoint, name=form.cleaned_data["name"]),
            )
        except DomainError as exc:
            add_domain_error(form, exc)
        else:
            new_key = issued
            form = KeyForm()
    endpoint.refresh_from_db()
    context = endpoint_context(request, endpoint, p, key_form=form, new_key=new_key, keys_open=True)
    response = page(request, "portal/endpoint.html", context, status=400 if form.errors else 200)
    # The raw key is in this response only: keep it out of caches and the back-forward cache.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def key_revoke(request: HttpRequest, pk: int, key_id: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk)
    key = get_object_or_404(
        EndpointKey.objects.for_user(request.user).select_related("endpoint__tenant"),
        pk=key_id,
        endpoint=endpoint,
    )
    _change(request, endpoint, lambda: actions.revoke_endpoint_key(request.user, key))
    messages.success(
        request,
        f"Key {key.name} ({key.display_prefix}…) revoked; calls with it are refused from the next deploy on.",
    )
    return redirect(reverse("endpoint", kwargs={"pk": endpoint.pk}) + "#keys")


# Quota -----------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def quota(request: HttpRequest) -> HttpResponse:
    p = portal(request)
    if (response := need_tenant(request, p)) is not None:
        return response
    tenant = p.tenant
    tiers = list(GpuTier.objects.order_by("name"))
    if request.method == "POST":
        form = QuotaRequestForm(request.POST, tiers=tiers)
        if form.is_valid():
            try:
                _change(
                    request,
                    None,
                    lambda: actions.request_quota(request.user, tenant, **form.request_kwargs()),
                )
            except DomainError as exc:
                add_domain_error(form, exc)
            else:
                messages.success(request, "Quota request sent. Staff see it in their approval queue.")
                return redirect("quota")
    else:
        initial = {k: _int(request.GET.get(k)) for k in ("gpus_total", "max_endpoints", "max_replicas")}
        for tier in tiers:
            if (value := _int(request.GET.get(f"tier__{tier.name}"))) is not None:
                initial[f"tier__{tier.name}"] = value
        form = QuotaRequestForm(initial={k: v for k, v in initial.items() if v is not None}, tiers=tiers)
    quota_row = Quota.objects.for_user(request.user).get(tenant=tenant)
    usage = Endpoint.objects.live().filter(tenant=tenant).quota_usage()
    requests = list(
        QuotaRequest.objects.for_user(request.user)
        .filter(tenant=tenant)
        .select_related("requested_by", "decided_by")
        .order_by("-created", "-id")[:20]
    )
    context = {
        "portal": p,
        "quota": quota_row,
        "bars": quota_bars(quota_row, usage),
        "form": form,
        "open_requests": [r for r in requests if r.status == QuotaRequestStatus.PENDING],
        "decided_requests": [r for r in requests if r.status != QuotaRequestStatus.PENDING],
        "tier_prices": {t.name: t.price_per_gpu_hour for t in tiers},
    }
    return page(request, "portal/quota.html", context, status=400 if form.is_bound and form.errors else 200)


# Staff approval queue --------------------------------------------------------------------------


def staff_only(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("the approval queue is for staff")


@login_required
@require_GET
def approvals(request: HttpRequest) -> HttpResponse:
    staff_only(request)
    p = portal(request)
    models = list(
        Model.objects.for_user(request.user)
        .filter(status=ModelStatus.REQUESTED)
        .select_related("requested_by")
        .order_by("created", "id")
    )
    quota_requests = list(
        QuotaRequest.objects.for_user(request.user)
        .filter(status=QuotaRequestStatus.PENDING)
        .select_related("tenant__quota", "requested_by")
        .order_by("created", "id")
    )
    usage: dict[int, dict] = {}
    tenant_ids = {r.tenant_id for r in quota_requests}
    if tenant_ids:
        rows = (
            Endpoint.objects.live()
            .filter(tenant_id__in=tenant_ids)
            .values("tenant_id", "template__tier__name")
            .annotate(gpus=Sum(F("max_replicas") * F("template__gpus_per_replica")))
            .order_by()
        )
        for row in rows:
            entry = usage.setdefault(row["tenant_id"], {"gpus_total": 0, "tier_gpus": {}})
            entry["gpus_total"] += row["gpus"] or 0
            entry["tier_gpus"][row["template__tier__name"]] = row["gpus"] or 0
    for r in quota_requests:
        r.usage = usage.get(r.tenant_id, {"gpus_total": 0, "tier_gpus": {}})
        r.asks = _asks(r)
    for m in models:
        m.weights_gib = capacity.gib(capacity.weights_bytes(m.parameters, m.bytes_per_parameter))
    recent = list(
        Model.objects.filter(status__in=MODEL_VISIBLE_TO_TENANTS | {ModelStatus.REJECTED})
        .exclude(decided_at=None)
        .select_related("decided_by")
        .order_by("-decided_at")[:5]
    )
    return page(
        request,
        "portal/approvals.html",
        {
            "portal": p,
            "models": models,
            "quota_requests": quota_requests,
            "recent_models": recent,
            "form": DecisionForm(),
        },
    )


def _asks(r: QuotaRequest) -> list[dict]:
    quota_row = r.tenant.quota
    asks = []
    if r.gpus_total is not None:
        asks.append(
            {
                "label": "GPUs in total",
                "now": quota_row.gpus_total,
                "asked": r.gpus_total,
                "used": r.usage["gpus_total"],
            }
        )
    for tier, gpus in sorted((r.tier_gpus or {}).items()):
        asks.append(
            {
                "label": f"GPUs on {tier}",
                "now": quota_row.tier_gpus.get(tier, 0),
                "asked": gpus,
                "used": r.usage["tier_gpus"].get(tier, 0),
            }
        )
    if r.max_endpoints is not None:
        asks.append(
            {"label": "Endpoints", "now": quota_row.max_endpoints, "asked": r.max_endpoints, "used": None}
        )
    if r.max_replicas is not None:
        asks.append(
            {"label": "Replicas", "now": quota_row.max_replicas, "asked": r.max_replicas, "used": None}
        )
    return asks


@login_required
@require_GET
def approvals_capacity(request: HttpRequest) -> HttpResponse:
    """GPU capacity per tier from the clusters (loaded after the queue, so a slow cluster never
    holds the queue up)."""
    staff_only(request)
    from workers.capacity import gpu_capacity

    clusters = [
        (c.host_namespace, c.release)
        for c in TenantCluster.objects.filter(phase="ready").select_related("tenant").order_by("tenant__slug")
    ]
    report = gpu_capacity(clusters)
    tiers = {t.name: t for t in GpuTier.objects.all()}
    for row in report.tiers:
        row.known = row.tier in tiers
    return page(
        request, "portal/_capacity.html", {"report": report, "tiers": tiers, "checked_at": timezone.now()}
    )


DECISIONS = {
    ("model", "approve"): actions.approve_model,
    ("model", "reject"): actions.reject_model,
    ("quota", "approve"): actions.approve_quota_request,
    ("quota", "reject"): actions.reject_quota_request,
}


@login_required
@require_POST
def decide(request: HttpRequest, kind: str, pk: int, verb: str) -> HttpResponse:
    staff_only(request)
    do = DECISIONS.get((kind, verb))
    if do is None:
        raise Http404("no such decision")
    if kind == "model":
        obj = get_object_or_404(Model.objects.for_user(request.user), pk=pk)
        what = f"model {obj.name}"
    else:
        obj = get_object_or_404(QuotaRequest.objects.for_user(request.user).select_related("tenant"), pk=pk)
        what = f"quota request of {obj.tenant.slug}"
    form = DecisionForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        do(request.user, obj, note)
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None
    except DomainError as exc:
        messages.error(request, f"Could not {verb} {what}: {exc.message}")
    else:
        messages.success(request, f"{verb.capitalize()}d {what}.")
    return redirect("approvals")
