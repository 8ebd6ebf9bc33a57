"""HA drills on a lab that runs controllers: a host loses power, and the watch that
times how HA brings its VMs back (restarted elsewhere, then answering ping).

The lab's own view is used throughout, never the controller's word: every host's
libvirt (over its local socket) says where each VM runs, and a ping from a healthy
host's namespace says whether it answers. A VM seen running on two hosts at once would
be a double start and fails the drill.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from ahvlite.errors import AhvliteError, Conflict, OperationTimeout
from ahvlite.lab import faults, lab, namespaces
from ahvlite.lab.layout import LabLayout
from ahvlite.virt import guest
from ahvlite.virt.conn import local_socket_connection

LEADER_KEY = "controller/leader"
Report = Callable[[str], None]


def running_on(layout: LabLayout, host: str) -> set[str]:
    """Running domains of a lab host, from its libvirtd's local socket (empty when that
    libvirtd is gone, as on a killed host)."""
    sock = layout.host(host).libvirt_sock
    try:
        with local_socket_connection(sock, timeout_s=3) as conn:
            return {n for n, st in guest.list_domains(conn) if st == "running"}
    except AhvliteError:
        return set()


def pings(layout: LabLayout, host: str, ip: str) -> bool:
    """One ping from inside lab host ``host`` to ``ip`` (1 s wait)."""
    h = layout.host(host)
    argv = [*namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file),
            "ping", "-c", "1", "-W", "1", ip]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


def _leader_host(name: str) -> str | None:
    from ahvlite.lab.services import open_lab_store

    layout = lab.layout_of(name)
    try:
        coord = open_lab_store(layout, session_timeout_s=5)
    except AhvliteError as exc:
        raise Conflict(f"lab {name} runs no controllers to restart VMs ({exc.message})",
                       hint=f"`ahvlite lab up --name {name} --zk --controllers`") from None
    try:
        raw = coord.get(LEADER_KEY)
        return str(json.loads(raw.value)["name"]) if raw else None
    finally:
        coord.close()


def kill_and_watch(name: str, host: str | None = None, *, timeout_s: float = 180,
                   report: Report = lambda _m: None) -> dict[str, Any]:
    """Kill ``host`` (default: the non-leader host running the most VMs) and time, per
    VM it ran, failure -> running elsewhere and failure -> answering ping."""
    layout, state = lab.layout_of(name), lab.state_of(name)
    leader = _leader_host(name)
    if leader is None:
        raise Conflict(f"the controllers of lab {name} have no leader",
                       hint="wait a few seconds after `lab up --controllers`")
    where = {h.name: running_on(layout, h.name) for h in layout.hosts}
    if host is None:
        candidates = [h for h in where if h != leader and where[h]]
        if not candidates:
            raise Conflict(f"no host of lab {name} but the leader's ({leader}) runs VMs",
                           hint="start a VM on another host, or name the host")
        host = max(candidates, key=lambda h: (len(where[h]), h))
    layout.host(host)  # unknown host -> InvalidSpec naming the known ones
    victims = sorted(where.get(host, set()))
    if not victims:
        raise Conflict(f"no VM runs on {host}: nothing for HA to restart")
    addresses = {g["name"]: g["address"].split("/")[0] for g in state.guests}
    healthy = [h.name for h in layout.hosts if h.name != host]
    report(f"{host} runs {', '.join(victims)}; the leader is on {leader}; "
           f"cutting {host}'s power")
    t0 = time.monotonic()
    killed = faults.kill(name, host)
    restarted: dict[str, tuple[str, float]] = {}
    answered: dict[str, float] = {}
    doubles: set[str] = set()
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        now_running = {h: running_on(layout, h) for h in healthy}
        seen: dict[str, list[str]] = {}
        for h, names in now_running.items():
            for vm in names:
                seen.setdefault(vm, []).append(h)
        doubles |= {vm for vm, hs in seen.items() if len(hs) > 1}
        for vm in victims:
            if vm not in restarted and vm in seen:
                restarted[vm] = (seen[vm][0], round(time.monotonic() - t0, 1))
                report(f"{vm} runs on {seen[vm][0]} after {restarted[vm][1]} s")
            if vm in restarted and vm not in answered and vm in addresses \
                    and pings(layout, restarted[vm][0], addresses[vm]):
                answered[vm] = round(time.monotonic() - t0, 1)
                report(f"{vm} answers ping at {addresses[vm]} after {answered[vm]} s")
        pending = [vm for vm in victims
                   if vm not in restarted or (vm in addresses and vm not in answered)]
        if not pending:
            break
        time.sleep(0.2)
    result = {"host": host, "leader": leader, "killed": killed["killed"],
              "vms": [{"name": vm, "to": restarted.get(vm, (None, None))[0],
                       "restarted_s": restarted.get(vm, (None, None))[1],
                       "answers_s": answered.get(vm)} for vm in victims],
              "double_starts": sorted(doubles)}
    if doubles:
        raise Conflict(f"double start: {', '.join(sorted(doubles))} ran on two hosts")
    missing = [vm for vm in victims
               if vm not in restarted or (vm in addresses and vm not in answered)]
    if missing:
        raise OperationTimeout(f"after {timeout_s:.0f} s, HA had not brought back "
                               f"{', '.join(missing)} (restarted: "
                               f"{', '.join(restarted) or 'none'})",
                               hint="`ahvlite ha show` and the controllers' logs say why")
    return result
