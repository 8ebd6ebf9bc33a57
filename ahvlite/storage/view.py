"""``storage show``: every redirector's status merged into one view (pure).

Each host's redirector writes what it sees (targets and their health, its own
target's sessions); the sessions on every target together say where each VM disk's
session is now. A VM's QEMU logs in from its host's address, so a session whose
address belongs to another host than the target's is a remote one (failed over).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ahvlite.storage.names import volume_target

# A status older than this many check intervals (plus slack) comes from a redirector
# that no longer runs.
STALE_INTERVALS = 5
STALE_SLACK_S = 5.0


def merge(statuses: Mapping[str, dict[str, Any] | str], *, now_s: float,
          vms: Mapping[str, str] | None = None,
          disks: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """``statuses``: host -> its redirector's status (or why it could not be read).
    ``vms``: VM UUID -> name; ``disks``: volume -> (VM, disk name)."""
    vms = vms or {}
    by_iqn = {volume_target(v): d for v, d in (disks or {}).items()}
    hosts: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    for host in sorted(statuses):
        st = statuses[host]
        if isinstance(st, str):
            hosts.append({"host": host, "error": st, "targets": []})
            continue
        interval = float((st.get("thresholds") or {}).get("interval_s") or 1.0)
        age = round(now_s - float(st.get("written_at") or 0), 1)
        stale = age > STALE_INTERVALS * interval + STALE_SLACK_S
        entry = {"host": host, "age_s": age, "stale": stale,
                 "error": f"status is {age:.0f} s old: is the redirector running?"
                 if stale else None,
                 "targets": st.get("targets") or [], "choice": st.get("choice") or [],
                 "local_target": st.get("local_target"), "logins": st.get("logins"),
                 "redirects": (st.get("redirects") or [])[-5:],
                 "failbacks": (st.get("failbacks") or [])[-5:]}
        hosts.append(entry)
        for s in (st.get("local_target") or {}).get("sessions") or []:
            vm_uuid = s.get("vm_uuid")
            vm_disk = by_iqn.get(s.get("target", ""))
            sessions.append({
                "vm": vms.get(vm_uuid or "") or (vm_disk[0] if vm_disk else None),
                "vm_uuid": vm_uuid, "disk": vm_disk[1] if vm_disk else None,
                "target": s.get("target"), "initiator": s.get("initiator"),
                "address": s.get("address"), "vm_host": s.get("host"), "on": host,
                "home": s.get("host") == host})
    sessions.sort(key=lambda s: (str(s["vm"]), str(s["disk"]), s["on"]))
    return {"hosts": hosts, "sessions": sessions}
