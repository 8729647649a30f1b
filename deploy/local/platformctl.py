#!/usr/bin/env python3
"""Entry point: `python deploy/local/platformctl.py up|down|status|env` (or `make platform`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
