from __future__ import annotations


class PlatformError(Exception):
    """A failure the user can act on; printed as one message, never as a traceback."""
