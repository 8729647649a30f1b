from __future__ import annotations

from tests.factories import sent_tasks  # noqa: F401  (autouse: no test sends to the real broker)
