"""Which host a VM goes to: the one entry point (pure).

``vm create``, template deploys, live migration and HA restarts all ask :func:`place`.
What differs between them is a parameter: the host asked for by name, the memory that
must be free there now, memory already promised this round, hosts closed for
maintenance, a check each candidate must pass (migration's CPU, network and storage
checks), and the :class:`Strategy` that picks among the hosts left:

- :data:`MOST_FREE_MEMORY`: memory alone (``requested``, else the most free memory).
- :class:`AdsRules`: ADS power-on placement (:mod:`ahvlite.sched.poweron`): the affinity
  and anti-affinity rules, then CPU balance when host loads are given. When memory (not
  a rule) rules out every host it leaves the answer to memory placement, which says so
  as it always has.

The caller reads the live cluster (capacities, loads, rules) and passes plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ahvlite.errors import AhvliteError, Conflict
from ahvlite.sched.capacity import HostCapacity, fit
from ahvlite.sched.model import Rules, Vm
from ahvlite.sched.poweron import HostLoad, power_on_problem, rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Want:
    """The VM to place. ``vcpus``: its CPU demand (all busy) where it is known."""

    name: str
    memory_mib: int
    vcpus: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class Strategy(Protocol):
    """Picks a host for ``vm`` among ``hosts``; None leaves it to memory placement.
    Raises AhvliteError when its rules allow no host."""

    def choose(self, hosts: Sequence[HostCapacity], vm: Want, *, need_free_mib: int,
               pending_mib: Mapping[str, int], placed: Mapping[str, str],
               closed: frozenset[str]) -> str | None: ...


class MostFreeMemory:
    """Memory alone: the requested host, else the one with the most free memory."""

    def choose(self, hosts: Sequence[HostCapacity], vm: Want, *, need_free_mib: int,
               pending_mib: Mapping[str, int], placed: Mapping[str, str],
               closed: frozenset[str]) -> str | None:
        return None


MOST_FREE_MEMORY = MostFreeMemory()


@dataclass(frozen=True)
class AdsRules:
    """ADS power-on placement. ``rules`` is read per call (rules changed while a leader
    runs apply to its next placement); ``loads`` (read only when needed) gives each
    host's CPU facts, None places by memory and rules alone (HA knows no CPU demand at
    restart time). ``lenient``: unreadable rules are logged and ignored instead of
    raised (a broken rules document must not keep VMs down)."""

    rules: Callable[[], Rules]
    loads: Callable[[], Mapping[str, HostLoad | None]] | None = None
    lenient: bool = False

    def _rules(self, vm: str) -> Rules:
        try:
            return self.rules()
        except AhvliteError as exc:
            if not self.lenient:
                raise
            log.warning("ADS rules unreadable, placing %s without them: %s", vm,
                        exc.message)
            return Rules()

    def choose(self, hosts: Sequence[HostCapacity], vm: Want, *, need_free_mib: int,
               pending_mib: Mapping[str, int], placed: Mapping[str, str],
               closed: frozenset[str]) -> str | None:
        loads = self.loads() if self.loads is not None else None
        problem = power_on_problem(hosts, self._rules(vm.name), loads=loads, closed=closed,
                                   pending_mib=pending_mib, placed=placed, skip=vm.name)
        cpu = (100.0 * vm.vcpus,) if vm.vcpus is not None else ()
        p = rank(problem, Vm(vm.name, "", vm.memory_mib, cpu, labels=dict(vm.labels)),
                 need_free_mib=need_free_mib)
        for w in p.warnings:  # a stale rule must not block placement, but say so
            log.warning("%s", w)
        if p.host is not None:
            return p.host
        if p.only_memory_short:
            return None
        why = "; ".join(f"{h}: {r}" for h, r in sorted(p.excluded.items()))
        raise Conflict(f"no host can run {vm.name} under the ADS rules ({why})",
                       hint="`ahvlite ads rules list`; pass --host to choose one yourself")


def place(hosts: Sequence[HostCapacity], vm: Want, *, strategy: Strategy = MOST_FREE_MEMORY,
          requested: str | None = None, need_free_mib: int | None = None,
          pending_mib: Mapping[str, int] | None = None,
          placed: Mapping[str, str] | None = None, closed: frozenset[str] = frozenset(),
          accept: Callable[[str], object] | None = None,
          down: Mapping[str, str] | None = None) -> str:
    """The host for ``vm`` among ``hosts``.

    ``requested``: the host asked for by name (the strategy is not asked).
    ``need_free_mib``: memory that must be free there now (default all of the VM's).
    ``pending_mib``: memory promised on each host earlier in this round. ``placed``:
    VM -> host of VMs that run or are about to (for anti-affinity). ``closed``: hosts
    that take no new VMs (maintenance). ``accept``: a check each candidate must pass
    (raises AhvliteError), tried from the most free memory down; ``down``: hosts that
    did not answer, with why, named when no host passes."""
    need = vm.memory_mib if need_free_mib is None else need_free_mib
    pending = dict(pending_mib or {})
    if requested is None:
        requested = strategy.choose(hosts, vm, need_free_mib=need, pending_mib=pending,
                                    placed=dict(placed or {}), closed=closed)
    open_hosts = [h for h in hosts if h.name not in closed]
    if accept is None:
        return fit(open_hosts, vm.memory_mib, requested=requested, need_free_mib=need,
                   pending_mib=pending)
    return _first_accepted(open_hosts, vm, accept, need=need, pending=pending,
                           requested=requested, down=down or {})


def _first_accepted(hosts: Sequence[HostCapacity], vm: Want, accept: Callable[[str], object],
                    *, need: int, pending: Mapping[str, int], requested: str | None,
                    down: Mapping[str, str]) -> str:
    candidates = sorted((h for h in hosts if h.reachable),
                        key=lambda h: (pending.get(h.name, 0) - h.free_mib, h.name))
    if requested is not None:
        candidates = [h for h in candidates if h.name == requested]
    why: list[str] = []
    for h in candidates:
        free = h.free_mib - pending.get(h.name, 0)
        if need > 0 and free < need:  # need 0: ``accept`` checks memory itself
            why.append(f"{h.name}: {free} MiB free, {vm.name} needs {need} MiB")
            continue
        try:
            accept(h.name)
        except AhvliteError as exc:
            why.append(f"{h.name}: {exc.message}")
            continue
        return h.name
    why += [f"{h}: unreachable ({e})" for h, e in down.items()]
    raise Conflict(f"no host can take {vm.name}: " + ("; ".join(why) or "no other host"),
                   hint="add capacity, or end maintenance on a host")
