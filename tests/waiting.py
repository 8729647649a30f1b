"""Wait for a condition instead of sleeping: poll, with a deadline and a message saying what failed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 60, interval: float = 0.2, what: str = "") -> T:
    """Call `check` until it returns something truthy; return that, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what or check}; last: {last!r}"
            )
        time.sleep(interval)
