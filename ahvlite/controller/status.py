"""What ``controller status`` shows: the leader, the members, heartbeats, the store."""

from __future__ import annotations

import json
from typing import Any

from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.daemon import LEADER_KEY


def _decode(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"name": raw.decode() if isinstance(raw, bytes) else raw}
    return value if isinstance(value, dict) else {"name": str(value)}


def controller_status(coord: Coordinator) -> dict[str, Any]:
    lead = coord.leader()
    record = coord.get(LEADER_KEY)
    last = _decode(record.value) if record else None
    leader = None
    if lead is not None:
        who = _decode(lead.identity)
        leader = {"name": who.get("name"), "host": who.get("host"), "pid": who.get("pid"),
                  "token": lead.token,
                  "last_heartbeat": (last or {}).get("acted_at")
                  if last and last.get("token") == lead.token else None}
    members = sorted((_decode(v) for v in coord.members().values()),
                     key=lambda m: str(m.get("name")))
    for m in members:
        # The election decides; a member's own flag lags by up to one heartbeat.
        m["acting"] = m.pop("leader", False)
        m["leader"] = leader is not None and m.get("name") == leader["name"]
    return {"store": coord.url, "session_timeout_s": coord.session_timeout_s,
            "leader": leader, "members": members,
            "last_heartbeat": (last or {}).get("acted_at"), "last_leader": last}
