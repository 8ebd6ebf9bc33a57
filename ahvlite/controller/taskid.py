"""Task ids: sortable by submission time, unique across submitters, and chosen by the
client when it wants a retried submission to be the same task (the API's idempotency).
Apart from the task store so the API's request models need not import it."""

from __future__ import annotations

import re
import uuid

TASK_ID_RE = re.compile(r"^[0-9]{13}-[0-9a-f]{8}$")


def new_task_id(now: float) -> str:
    """Milliseconds since the epoch, then 32 random bits."""
    return f"{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}"
