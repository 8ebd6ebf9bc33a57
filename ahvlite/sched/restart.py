"""Which of a lost host's VMs restart where, in which order (pure).

Order: HA priority (label ``ahvlite.io/ha-priority``, higher first), then larger VMs
first (they are the hard ones to fit), then name. Pinned VMs (PCI passthrough, the
``ahvlite.io/pinned`` label) and CVMs never restart elsewhere. Each VM is placed by
:func:`ahvlite.sched.place.place` with the :class:`~ahvlite.sched.place.Strategy` given:
most free memory by default; the controller passes ADS placement
(:class:`~ahvlite.sched.place.AdsRules`: affinity and anti-affinity rules, by memory
since HA knows no CPU demand at restart time). A VM no host can
take now is reported as unplaced; the service plans again on its next round, so it
restarts once capacity returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ahvlite.errors import AhvliteError
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.place import MOST_FREE_MEMORY, Strategy, Want, place
from ahvlite.spec.labels import HA_PRIORITY_LABEL, ROLE_LABEL, is_pinned


@dataclass(frozen=True)
class VmRecord:
    """What the leader last saw of a VM (persisted under ``ha/vms/NAME``)."""

    name: str
    host: str
    memory_mib: int
    running: bool
    labels: dict[str, str]
    has_pci_hostdev: bool = False

    @property
    def priority(self) -> int:
        try:
            return int(self.labels.get(HA_PRIORITY_LABEL, "0"))
        except ValueError:
            return 0

    @property
    def is_cvm(self) -> bool:
        return self.labels.get(ROLE_LABEL) == "cvm"

    @property
    def protected(self) -> bool:
        """Restartable elsewhere: neither pinned nor a CVM."""
        return not self.is_cvm and not is_pinned(self.labels,
                                                 has_pci_hostdev=self.has_pci_hostdev)


@dataclass(frozen=True)
class RestartPlan:
    steps: tuple[tuple[str, str], ...]  # (vm, target host) in restart order
    unplaced: tuple[tuple[str, str], ...]  # (vm, why)
    skipped: tuple[tuple[str, str], ...]  # (vm, why): pinned / CVM, never restarted


def restart_order(vms: Sequence[VmRecord]) -> list[VmRecord]:
    return sorted(vms, key=lambda v: (-v.priority, -v.memory_mib, v.name))


def plan_restarts(lost: Sequence[VmRecord], healthy: Sequence[HostCapacity], *,
                  strategy: Strategy = MOST_FREE_MEMORY,
                  running: Mapping[str, str] | None = None) -> RestartPlan:
    """Targets for the VMs that ran on lost hosts; ``healthy`` excludes lost hosts.
    ``running``: VM -> host of the VMs on healthy hosts (for anti-affinity)."""
    steps, unplaced, skipped = [], [], []
    pending: dict[str, int] = {}
    placed = dict(running or {})
    hosts = [h for h in healthy if h.reachable]
    for vm in restart_order([v for v in lost if v.running]):
        if vm.is_cvm:
            skipped.append((vm.name, "a CVM stays with its host"))
            continue
        if not vm.protected:
            skipped.append((vm.name, "pinned to its host"))
            continue
        if not hosts:
            unplaced.append((vm.name, "no healthy host"))
            continue
        try:
            target = place(hosts, Want(vm.name, vm.memory_mib, labels=vm.labels),
                           strategy=strategy, pending_mib=pending, placed=placed)
        except AhvliteError as exc:
            unplaced.append((vm.name, exc.message))
            continue
        pending[target] = pending.get(target, 0) + vm.memory_mib
        placed[vm.name] = target
        steps.append((vm.name, target))
    return RestartPlan(tuple(steps), tuple(unplaced), tuple(skipped))
