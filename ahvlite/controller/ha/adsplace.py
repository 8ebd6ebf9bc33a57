"""HA restarts placed by ADS's power-on placement (pure): the same affinity and
anti-affinity rules as ``vm create`` and the planner, so a restart never puts two
members of an anti-affinity group on one host and keeps a VM on its "must" hosts.

HA knows memory, not CPU demand, at restart time: hosts are modelled by memory (what is
used now plus what this round already promised), and the CPU terms of the ranking are
equal for every host, so among the hosts the rules allow the most free memory wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ahvlite.cluster.placement import HostCapacity
from ahvlite.controller.ads.model import Host, Problem, Rules, Vm
from ahvlite.controller.ads.placement import place_vm
from ahvlite.controller.ha.restart import Place, VmRecord
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)


def ads_place(rules: Callable[[], Rules]) -> Place:
    """A :class:`~ahvlite.controller.ha.restart.Place` honouring ``rules()`` (read per
    call, so rules changed while the leader runs apply to its next restart)."""

    def place(hosts: list[HostCapacity], vm: VmRecord, *, pending_mib: dict[str, int],
              placed: dict[str, str]) -> str:
        model_hosts = tuple(Host(h.name, 100.0, max(h.total_mib, 1), schedulable=h.reachable)
                            for h in hosts)
        # What each host holds now, as one immovable load; the VMs that run (or are
        # about to) there carry no load of their own, only their names for the rules.
        loads = tuple(Vm(f"(load of {h.name})", h.name,
                         max(h.total_mib - h.free_mib + pending_mib.get(h.name, 0), 0),
                         pinned=True) for h in hosts)
        names = {h.name for h in hosts}
        others = tuple(Vm(name, host, 0, pinned=True) for name, host in sorted(placed.items())
                       if host in names and name != vm.name)
        try:
            current = rules()
        except AhvliteError as exc:
            # A broken rules document must not keep VMs down: restart without rules.
            log.warning("ha: ADS rules unreadable, restarting %s without them: %s",
                        vm.name, exc.message)
            current = Rules()
        problem = Problem(model_hosts, loads + others, current)
        return place_vm(problem, Vm(vm.name, "", vm.memory_mib, labels=vm.labels))

    return place
