"""Failure drills for HA: a host's power loss, and a network split at the rack.

``kill`` ends every process of a lab host at once with SIGKILL (its recorded daemons,
plus what lives in its network and mount namespaces: QEMUs, ZooKeeper, the controller,
the netagent's dnsmasq), as losing power would: no daemon gets to clean up.
``partition`` moves a group of hosts onto a top-of-rack segment of their own (see
segments.py): they keep running and reach each other, but nobody else; a group of one
hears nothing and is heard by nobody. ``heal`` puts hosts back on the main segment.
``power_on`` starts a killed host's daemons again, so one lab serves many drills.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from ahvlite.clock import wait_until
from ahvlite.lab import lab, processes, segments
from ahvlite.lab.state import ProcessRecord
from ahvlite.net import netlink


def _victims(name: str, host: str) -> list[ProcessRecord]:
    layout, state = lab.layout_of(name), lab.state_of(name)
    h = layout.host(host)  # unknown host -> InvalidSpec naming the known ones
    recorded = [p for p in state.processes if p.host == h.name]
    # The host's mount namespace holds what lives in namespaces nested in it too (the
    # netagent's dnsmasq per managed network): a power cut ends those as well.
    found = [*processes.pids_in_netns(netlink.netns_path(h.netns)),
             *processes.pids_in_mntns(h.mnt_ns_file)]
    by_pid = {p.pid: p for p in [*found, *recorded]}  # recorded roles win
    return [p for p in by_pid.values() if p.pid != os.getpid()]


def kill(name: str, host: str) -> dict[str, Any]:
    """SIGKILL every process of ``host`` (recorded PIDs + its namespace); power loss."""
    victims = [p for p in _victims(name, host) if processes.is_alive(p)]
    for p in victims:
        # The start time check makes sure the PID is still the process we mean.
        if processes.starttime(p.pid) == p.starttime:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    live = victims

    def ended() -> bool:
        nonlocal live
        for p in live:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        live = [p for p in live if processes.is_alive(p)]
        return not live

    wait_until(ended, timeout_s=5, interval_s=0.02)
    return {"host": host, "killed": sorted(f"{p.role}:{p.pid}" for p in victims),
            "survivors": sorted(f"{p.role}:{p.pid}" for p in live)}


def power_on(name: str, host: str) -> dict[str, Any]:
    """Power a host ``kill`` stopped back on: its recorded daemons start again in the
    order they first started, with their recorded command lines, and it answers over
    libvirt TLS before this returns. Its VMs do not come back by themselves (a power
    cycle lost them): what happens to them is the cluster's HA's decision."""
    from ahvlite.errors import Conflict

    layout, state = lab.layout_of(name), lab.state_of(name)
    h = layout.host(host)
    dead = [p for p in state.processes if p.host == h.name and not processes.is_alive(p)]
    if not dead:
        raise Conflict(f"{host} is running: nothing to power on",
                       hint=f"`ahvlite lab kill {host}` cuts its power first")
    started = [f"{p.role}:{lab.start_daemon(name, host, p.role)}" for p in dead]
    lab.wait_libvirt(name, host)
    return {"host": host, "started": started}


def partition(name: str, *hosts: str) -> dict[str, Any]:
    """Split ``hosts`` off as one group on a new segment (they still reach each other)."""
    layout, state = lab.layout_of(name), lab.state_of(name)
    return segments.split(layout, state, hosts)


def heal(name: str, *hosts: str) -> dict[str, Any]:
    """Put ``hosts`` (default: every host) back on the main segment."""
    layout, state = lab.layout_of(name), lab.state_of(name)
    return segments.rejoin(layout, state, hosts)
