"""Small filters the pages share: money, durations, phase badges."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template

from endpoints.choices import SERVING_PHASES, STARTING_PHASES, EndpointPhase

register = template.Library()


@register.filter
def money(amount) -> str:
    """$1,234.50 — the tiers' prices carry no currency, so the pages use one symbol throughout."""
    if amount is None or amount == "":
        return "—"
    value = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"${value:,.2f}"


@register.filter
def money0(amount) -> str:
    """$1,235 — whole units, for monthly figures."""
    if amount is None or amount == "":
        return "—"
    value = Decimal(amount).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return f"${value:,.0f}"


@register.filter
def duration(seconds) -> str:
    """4 s, 2 min 5 s, 1 h 3 min."""
    if seconds is None or seconds == "":
        return "—"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def phase_tone(phase: str) -> str:
    """A colour family for a phase badge: starting, ok, warn, bad or off."""
    if phase in STARTING_PHASES:
        return "starting"
    if phase == EndpointPhase.READY:
        return "ok"
    if phase in SERVING_PHASES:
        return "warn"
    if phase == EndpointPhase.FAILED:
        return "bad"
    return "off"


@register.filter
def phase_label(phase: str) -> str:
    try:
        return EndpointPhase(phase).label
    except ValueError:
        return phase


@register.filter
def percent_of(used, limit) -> int:
    """USED as a percentage of LIMIT, 0–100 (a zero limit reads as full when anything is used)."""
    used, limit = int(used or 0), int(limit or 0)
    if limit <= 0:
        return 100 if used > 0 else 0
    return max(0, min(100, round(100 * used / limit)))


@register.filter
def get_item(mapping, key):
    return (mapping or {}).get(key)


@register.filter
def thousands(value) -> str:
    """455115 -> 455,115."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def params(count) -> str:
    """A parameter count as people say it: 7615616512 -> 7.6B, 70000000000 -> 70B, 500000000 -> 500M."""
    count = int(count or 0)
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M")):
        if count >= size:
            value = count / size
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 100 else f"{value:.0f}"
            return f"{text}{suffix}"
    return str(count)


@register.filter
def ago(moment) -> str:
    """'just now' under a minute, else Django's timesince with 'ago'."""
    from django.utils import timezone
    from django.utils.timesince import timesince

    if not moment:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    return f"{timesince(moment)} ago"
