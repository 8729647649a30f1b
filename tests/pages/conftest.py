"""Pages are tested against the API tests' world: acme (alice owner, bob member, carol viewer),
globex (grace owner), dual (member of both), staff; one endpoint in each tenant."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.api.conftest import World, world  # noqa: F401  (the shared fixture)
from tests.factories import sent_tasks  # noqa: F401  (autouse: no test sends to the real broker)

URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""", re.IGNORECASE)
PROTOCOL_RELATIVE = re.compile(r"""(?:src|href|action|formaction)\s*=\s*["']\s*//""", re.IGNORECASE)


@pytest.fixture
def signed_in():
    """A test client signed in as USER."""

    def client(user) -> Client:
        c = Client()
        c.force_login(user)
        return c

    return client


def no_external_links(html: str, allowed: tuple[str, ...] = ()) -> None:
    """No http(s) URL in the page but ALLOWED ones (an endpoint's own URL): nothing is loaded
    from or linked to a CDN or any other host."""
    found = [u for u in URL.findall(html) if u.startswith(("http:", "https:")) and not u.startswith(allowed)]
    found += PROTOCOL_RELATIVE.findall(html)
    assert not found, f"external URLs in the page: {found}"


def text(response) -> str:
    return response.content.decode()


__all__ = ["World", "no_external_links", "text"]
