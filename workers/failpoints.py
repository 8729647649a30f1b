"""Named points where a test can make a worker die (SIGKILL, no cleanup) exactly once.

PORTAL_FAILPOINTS lists point names; PORTAL_FAILPOINT_DIR holds a marker per point already hit, so
the restarted worker runs through. Unset in production: `hit()` is then a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_POINTS = frozenset(p for p in os.environ.get("PORTAL_FAILPOINTS", "").split(",") if p)
_DIR = os.environ.get("PORTAL_FAILPOINT_DIR", "")


def hit(name: str) -> None:
    if name not in _POINTS or not _DIR:
        return
    marker = Path(_DIR) / name
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
