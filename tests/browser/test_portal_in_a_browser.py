"""The portal as a person uses it, in Chromium, against the local platform with a real worker and
watcher: request an endpoint and watch it come up, hit the quota, approve a model, and find
another tenant's endpoint closed. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import os
import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from endpoints import actions, dispatch
from endpoints.choices import Role
from endpoints.models import Endpoint
from tests.factories import REVISION, make_image

pytestmark = [pytest.mark.platform, pytest.mark.django_db(transaction=True)]


def member_of(tenant, person, username: str, role: Role = Role.MEMBER):
    user = person(username)
    actions.add_member(None, tenant, user, role)
    return user


def call_it(endpoint: Endpoint, key: str, calls: int = 6) -> None:
    """A few chat completions through the gateway with KEY (once the gateway knows it), so the
    dashboard has something to draw. Best effort: the screenshots show what came of it."""
    endpoint.refresh_from_db()
    base = os.environ.get("PORTAL_GATEWAY_URL") or endpoint.url
    host = urlsplit(endpoint.url).hostname
    body = {"model": endpoint.name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
    deadline, answered = time.monotonic() + 40, 0
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline and answered < calls:
            try:
                r = http.post(
                    f"{base}/v1/chat/completions",
                    json=body,
                    headers={"Host": host, "Authorization": f"Bearer {key}"},
                )
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                answered += 1
            else:
                time.sleep(1)


def test_a_tenant_requests_an_endpoint_and_watches_it_reach_ready(
    worker, watcher, catalog, make_tenant, person, open_page, screenshot
):
    tenant = make_tenant()
    user = member_of(tenant, person, "tina")
    page = open_page(user)
    expect(page.get_by_text("No endpoints yet.")).to_be_visible()

    page.get_by_role("link", name="Catalog", exact=True).click()
    expect(page.get_by_role("heading", name="Qwen2.5-7B-Instruct")).to_be_visible()
    expect(page.get_by_text("concurrent 4k-token chats")).to_be_visible()
    screenshot(page, "02-catalog")

    page.get_by_role("link", name="Request an endpoint").first.click()
    page.get_by_label("Name").fill("chat")
    page.get_by_label("Max replicas").fill("2")
    # The live preview follows the form without a reload: 0 used + 2 asked of 16 GPUs.
    expect(page.locator("#preview")).to_contain_text("0 + 2 of 16")
    expect(page.locator("#preview")).to_contain_text("At max (2)")
    screenshot(page, "03-request-form")
    page.get_by_role("button", name="Request endpoint").click()
    page.wait_for_url(re.compile(r"/endpoints/\d+/$"))
    endpoint = Endpoint.objects.get(tenant=tenant, name="chat")

    # Watch the page (no reload) until Ready: the phases and the overall progress it showed.
    page.evaluate("window.__sameDocument = true")
    seen_phases: list[str] = []
    seen_progress: list[int] = []
    loading_shot = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        phase = page.locator("#phase").inner_text()
        if not seen_phases or seen_phases[-1] != phase:
            seen_phases.append(phase)
        overall = page.locator("#overall-progress")
        if overall.count():
            value = int(overall.inner_text())
            if not seen_progress or seen_progress[-1] != value:
                seen_progress.append(value)
            if not loading_shot and value >= 20:
                screenshot(page, "04-endpoint-starting")
                loading_shot = True
        if phase == "Ready":
            break
        if phase == "Failed":
            pytest.fail(f"endpoint failed: {Endpoint.objects.get(pk=endpoint.pk).phase_message}")
        time.sleep(0.25)
    else:
        pytest.fail(f"not Ready in time; the page showed {seen_phases} and progress {seen_progress}")

    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    assert len(seen_phases) >= 3, seen_phases
    assert len(seen_progress) >= 2 and seen_progress == sorted(seen_progress), (seen_phases, seen_progress)
    # Once Ready the timeline has every stage done, the route is accepted and the URL came in.
    expect(page.locator(".stage-done")).to_have_count(7)
    expect(page.locator("#status")).not_to_have_attribute("hx-trigger", "every 2s")
    expect(page.locator("#status .cond-true").filter(has_text="Accepted").first).to_be_visible()
    expect(page.locator("#ep-url")).to_contain_text("chat-" + tenant.slug)
    page.get_by_label("Key name").fill("support-bot")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key-value")).to_contain_text("ipk_")
    expect(page.locator("#dash-message")).not_to_have_text("Loading metrics…", timeout=30_000)
    screenshot(page, "05-endpoint-ready")
    call_it(endpoint, page.locator("#new-key-value").inner_text())
    page.goto(f"/endpoints/{endpoint.pk}/")
    page.get_by_role("button", name="15m").click()
    expect(page.locator("#dash-message")).not_to_have_text("Loading metrics…", timeout=30_000)
    screenshot(page, "05b-endpoint-dashboard")

    page.goto("/")
    expect(page.locator(".endpoints-table")).to_contain_text("Ready")
    screenshot(page, "01-home")

    phone = open_page(user, viewport=(390, 844))
    screenshot(phone, "06-home-phone")
    phone.goto(f"/endpoints/{endpoint.pk}/")
    screenshot(phone, "07-endpoint-phone")


def test_an_over_quota_request_shows_the_error(
    catalog, make_tenant, person, open_page, screenshot, live_server
):
    tenant = make_tenant("q", gpus=1)
    user = member_of(tenant, person, "quinn")
    page = open_page(user)
    page.goto("/endpoints/new/")
    page.get_by_label("Name").fill("too-big")
    page.get_by_label("Max replicas").fill("2")
    expect(page.locator("#preview")).to_contain_text("Over quota")
    page.get_by_role("button", name="Request endpoint").click()
    alert = page.locator("#over-quota")
    expect(alert).to_contain_text("Over quota")
    expect(alert).to_contain_text(f"GPUs on {catalog['tier'].name}: 0 used + 2 requested = 2, limit 1")
    expect(page.locator("#id_max_replicas-errors")).to_contain_text("would go over the tenant's quota")
    screenshot(page, "08-over-quota")
    alert.get_by_role("link", name="ask for more quota").click()
    page.wait_for_url(f"{live_server.url}/quota/")
    page.locator(f"#id_tier__{catalog['tier'].name}").fill("4")
    page.get_by_label("Reason").fill("a second replica for launch week")
    page.get_by_role("button", name="Send request").click()
    expect(page.get_by_text("Quota request sent.")).to_be_visible()
    screenshot(page, "09-quota")
    assert not Endpoint.objects.filter(name="too-big").exists()


def test_an_admin_approves_a_model_and_the_tenant_then_sees_its_template(
    catalog, make_tenant, person, open_page, screenshot
):
    tenant = make_tenant("a")
    user = member_of(tenant, person, "ada")
    admin = person("root", staff=True)
    model = actions.register_model(
        admin,
        name="Mistral-7B-Instruct-v0.3",
        source="hf://mistralai/Mistral-7B-Instruct-v0.3",
        revision=REVISION,
        licence="apache-2.0",
        parameters=7_250_000_000,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        max_context=32768,
    )
    actions.request_quota(user, tenant, reason="launch week", gpus_total=24)

    page = open_page(admin)
    page.goto("/approvals/")
    item = page.locator(f"#model-{model.pk}")
    expect(item).to_contain_text("apache-2.0")
    expect(page.locator("#capacity table")).to_contain_text(catalog["tier"].name)  # from the cluster
    screenshot(page, "10-approvals")
    item.get_by_label("Comment").fill("licence checked")
    item.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("Approved model Mistral-7B-Instruct-v0.3.")).to_be_visible()
    model.refresh_from_db()
    assert model.status == "approved" and model.decision_note == "licence checked"

    # The admin's next step (in the Django admin): a template from the approved model.
    actions.create_template(
        admin,
        name="mistral-7b-l40s",
        model=model,
        tier=catalog["tier"],
        image=make_image(tag="v0.11.1"),
        max_model_len=8192,
        min_replicas=1,
        max_replicas=2,
    )
    tenant_page = open_page(user)
    tenant_page.goto("/catalog/")
    card = tenant_page.locator("article").filter(has_text="Mistral-7B-Instruct-v0.3")
    expect(card).to_contain_text("apache-2.0")
    expect(card).to_contain_text("mistral-7b-l40s")


def test_another_tenants_endpoint_url_answers_404(catalog, make_tenant, person, open_page, monkeypatch):
    monkeypatch.setattr(dispatch, "send_task", lambda name, endpoint_id: None)  # no deploy needed
    mine, theirs = make_tenant("m"), make_tenant("t")
    user = member_of(mine, person, "mo")
    other = actions.request_endpoint(None, tenant=theirs, template=catalog["template"], name="private")
    page = open_page(user)
    response = page.goto(f"/endpoints/{other.pk}/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("private")
