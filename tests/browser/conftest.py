"""Browser tests: Playwright drives Debian's Chromium against the app (pytest-django's live server)
and the local platform with a real worker and watcher (the integration tests' fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import make_user

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
PASSWORD = "pw-not-secret"  # noqa: S105 - the factories' test password

# Playwright's sync API runs an event loop in the test's thread; the test's own ORM calls are
# still synchronous and safe (the app itself runs in the live server's threads).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium"
    )
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, live_server):
    """A new page (own cookies) signed in as USER; VIEWPORT defaults to a laptop screen."""
    contexts = []

    def open_(user=None, viewport=(1280, 900)):
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, base_url=live_server.url
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if user is not None:
            page.goto("/login/")
            page.get_by_label("Username").fill(user.username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{live_server.url}/")
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, full_page: bool = True) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return shot


@pytest.fixture
def person():
    def make(username: str, *, staff: bool = False):
        return make_user(username, staff=staff)

    return make
