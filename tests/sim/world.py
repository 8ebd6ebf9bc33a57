"""A simulated cluster that drives the real HA code (the host agent and the leader's
service) on a simulated clock, in the spirit of Proxmox's ha-manager test harness.

What is simulated (our own injected interfaces only): the coordination store (a
ZooKeeper-like ensemble with quorum, leader election of its own, members that keep
serving stale reads for ``sync_s`` after losing their leader, client connections and
their interruptions, controller sessions and leadership), each host's hypervisor, each
host's watchdog, and a network that can be split into any groups. What runs for real:
:class:`~ahvlite.controller.ha.agent.HostAgent` and
:class:`~ahvlite.controller.ha.service.HaService`, unchanged.

The invariant checked at every step: no VM runs on two hosts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Check,
    Delete,
    Leadership,
    MemberState,
    NotLeader,
    Op,
    Put,
    Versioned,
    VersionMismatch,
)
from ahvlite.controller.ha.agent import HostAgent, LocalVm
from ahvlite.controller.ha.records import StoredVm
from ahvlite.controller.ha.service import HaService
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.errors import HostUnreachable, NotFound, OperationFailed
from ahvlite.sched.place import MOST_FREE_MEMORY
from ahvlite.virt.failover import DomainFacts

DT = 0.05


class WorldClock:
    """The world's simulated time, as the clock the HA code reads (monotonic and wall
    alike). The simulator calls the steps itself, so nothing waits on it."""

    def __init__(self, world: Any) -> None:
        self.world = world

    def monotonic(self) -> float:
        return float(self.world.now)

    def time(self) -> float:
        return float(self.world.now)

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the simulator never sleeps")

    def wait(self, event: Any, seconds: float | None) -> bool:
        raise AssertionError("the simulator never waits")


@dataclass
class Timings:
    election_s: float = 1.0  # a store election once members notice their leader is gone
    sync_s: float = 2.5  # followers notice a lost leader after syncLimit * tick
    session_timeout_s: float = 3.0
    boot_s: float = 20.0  # a reset or powered-on host is back after this
    agent_restart_s: float = 1.0  # systemd restarts a crashed agent
    start_s: float = 0.0  # define + start of a VM


@dataclass
class Host:
    name: str
    memory: int = 8
    powered: bool = True
    libvirtd: bool = True
    booting_until: float = -math.inf
    running: dict[str, int] = field(default_factory=dict)  # vm -> epoch
    defined: dict[str, int] = field(default_factory=dict)  # vm -> epoch
    agent: HostAgent | None = None
    agent_paused_until: float = -math.inf
    agent_dead_until: float = math.inf  # restart time of a crashed agent
    lease_keep: float = -math.inf  # the agent's lease file (tmpfs: gone on reset)
    wd_armed: bool = False
    wd_fed: float = -math.inf
    resets: int = 0
    ha: HaService | None = None  # its controller's HA service, while it leads


class Store:
    """The ensemble: data, members, quorum, elections, sessions, controller leader."""

    def __init__(self, world: World, members: list[str]) -> None:
        self.w = world
        self.members = members  # host names of the members
        self.data: dict[str, tuple[bytes, int]] = {}
        self.quorum: frozenset[str] = frozenset()  # members in the serving quorum
        self.zk_leader: str | None = None
        self.electing_until = -math.inf  # quorum members elect until then
        self.lost_at: dict[str, float] = {}  # member -> when it lost its leader
        self.snapshots: dict[str, dict[str, tuple[bytes, int]]] = {}
        self.sessions: dict[str, float] = {}  # controller host -> last contact with quorum
        self.queue: list[str] = []  # controller candidates in election order
        self.leader: str | None = None
        self.token = 0
        self.epoch = 0

    def majority(self) -> int:
        return len(self.members) // 2 + 1

    def bootstrap(self) -> None:
        """An ensemble that already serves, every member in one quorum."""
        self.quorum = frozenset(self.members)
        self.zk_leader = min(self.members)
        self.epoch = 1

    def update(self) -> None:
        w, now, t = self.w, self.w.now, self.w.t
        alive = [m for m in self.members if w.hosts[m].powered]
        by_group: dict[int, list[str]] = {}
        for m in alive:
            by_group.setdefault(w.group(m), []).append(m)
        best = set(max(by_group.values(), key=len, default=[]))
        was_up = self.zk_leader is not None
        if self.zk_leader is not None:
            if self.zk_leader in best and len(best) >= self.majority():
                for m in self.quorum - best:
                    self._lose(m)
                self.quorum = frozenset(best)  # a returning follower syncs and serves
                for m in best:
                    self.lost_at.pop(m, None)
                    self.snapshots.pop(m, None)
                return
            for m in self.quorum:
                self._lose(m)
            self.quorum, self.zk_leader, self.electing_until = frozenset(), None, -math.inf
        if len(best) < self.majority():
            self.quorum, self.electing_until = frozenset(), -math.inf
            return
        if set(self.quorum) != best:
            # Members notice their lost leader only after sync_s; then they elect.
            notice = max([now] + [self.lost_at[m] + t.sync_s for m in best if m in self.lost_at])
            self.electing_until = notice + t.election_s
            self.quorum = frozenset(best)
        if now >= self.electing_until:
            self.zk_leader = min(best)
            self.epoch += 1
            for m in best:
                self.lost_at.pop(m, None)
                self.snapshots.pop(m, None)
            if not was_up:
                # A new ZooKeeper leader gives every session a fresh timeout.
                self.sessions = {h: now for h in self.sessions}

    def _lose(self, m: str) -> None:
        if m not in self.lost_at:
            self.lost_at[m] = self.w.now
            self.snapshots[m] = dict(self.data)

    def state(self, m: str) -> str:
        """What member ``m`` says: serving, stale (serving reads it can no longer
        commit: it has not noticed its leader is gone), electing, or down."""
        if not self.w.hosts[m].powered:
            return "down"
        if m in self.lost_at and self.w.now < self.lost_at[m] + self.w.t.sync_s:
            return "stale"
        if self.zk_leader is not None and m in self.quorum:
            return "serving"
        return "electing"

    def fresh(self, m: str) -> bool:
        return self.state(m) == "serving"

    def sessions_update(self, clients: dict[str, Client]) -> None:
        now = self.w.now
        quorum_up = self.zk_leader is not None
        for host, c in clients.items():
            if c.member is not None and self.fresh(c.member) and self.w.hosts[host].powered:
                self.sessions[host] = now
                if host not in self.queue:
                    self.queue.append(host)
        if quorum_up:
            for host in list(self.queue):
                if now - self.sessions.get(host, -math.inf) > self.w.t.session_timeout_s:
                    self.queue.remove(host)
            new = self.queue[0] if self.queue else None
            if new != self.leader:
                self.leader = new
                self.token += 1
                self.w.log(f"controller leader {new}")


class Client:
    """One host's connection to the store; a :class:`Coordinator` for our code."""

    url = "sim://"
    session_timeout_s = 3.0

    def __init__(self, world: World, host: str) -> None:
        self.w = world
        self.host = host
        self.member: str | None = None
        self._generation = 0

    @property
    def s(self) -> Store:
        return self.w.store

    def update(self) -> None:
        m = self.member
        ok = m is not None and self.w.reach(self.host, m) and self.s.state(m) in ("serving",
                                                                               "stale")
        if m is not None and not ok:
            self.member = None
            self._generation += 1
        if self.member is None:
            cands = [m for m in self.s.members if self.w.reach(self.host, m)
                     and self.s.state(m) in ("serving", "stale")]
            cands.sort(key=lambda m: self.s.state(m) != "serving")
            if cands:
                self.member = cands[0]

    def _view(self) -> dict[str, tuple[bytes, int]]:
        if not self.w.hosts[self.host].powered or self.member is None:
            raise HostUnreachable("store: not connected")
        if self.s.fresh(self.member):
            return self.s.data
        return self.s.snapshots.get(self.member, self.s.data)

    def _writable(self) -> None:
        if self.member is None or not self.s.fresh(self.member) \
                or not self.w.hosts[self.host].powered:
            raise HostUnreachable("store: no quorum reachable")

    # keys
    def get(self, key: str) -> Versioned | None:
        got = self._view().get(key)
        return None if got is None else Versioned(*got)

    def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        self.transaction([Put(key, value, expected_version)])
        return self.s.data[key][1]

    def delete(self, key: str, expected_version: int | None = None) -> None:
        self.transaction([Delete(key, expected_version)])

    def children(self, prefix: str) -> dict[str, Versioned]:
        base = prefix.rstrip("/") + "/"
        return {k[len(base):]: Versioned(*v) for k, v in self._view().items()
                if k.startswith(base) and "/" not in k[len(base):]}

    def transaction(self, ops: list[Op]) -> None:
        self._writable()
        data = self.s.data
        for op in ops:
            have = data.get(op.key)
            if isinstance(op, Check):
                if have is None or have[1] != op.version:
                    raise VersionMismatch(f"{op.key}: version changed")
                continue
            want = op.expected_version
            if want == MUST_NOT_EXIST and have is not None:
                raise VersionMismatch(f"{op.key}: exists")
            if want is not None and want != MUST_NOT_EXIST and (have is None or have[1] != want):
                raise VersionMismatch(f"{op.key}: version changed")
            if isinstance(op, Delete) and have is None:
                raise NotFound(op.key)
        for op in ops:
            if isinstance(op, Put):
                have = data.get(op.key)
                data[op.key] = (op.value, 0 if have is None else have[1] + 1)
            elif isinstance(op, Delete):
                data.pop(op.key, None)

    def watch(self, key: str, callback: Callable[[Versioned | None], None]) -> Callable[[], None]:
        raise OperationFailed("not simulated")

    # membership (unused by HA)
    def join(self, member: str, data: bytes) -> None: ...
    def update_member(self, member: str, data: bytes) -> None: ...
    def leave(self, member: str) -> None: ...
    def members(self) -> dict[str, bytes]:
        return {}

    def ensemble(self, timeout_s: float = 0.5) -> list[MemberState]:
        out = []
        for m in self.s.members:
            st = self.s.state(m) if self.w.reach(self.host, m) else "down"
            out.append(MemberState(m, {"serving": "serving", "stale": "serving",
                                       "electing": "electing"}.get(st, "unreachable")))
        return out

    def sync(self, key: str) -> None:
        self._writable()

    def generation(self) -> int:
        return self._generation

    # leadership
    def campaign(self, identity: str, on_elected: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None: ...
    def resign(self) -> None: ...
    def leader(self) -> Leadership | None:
        return Leadership(self.s.leader, self.s.token) if self.s.leader else None

    def is_leader(self) -> bool:
        return self.member is not None and self.s.leader == self.host \
            and self.w.hosts[self.host].powered

    def check_leader(self) -> int:
        if not self.is_leader():
            raise NotLeader("not the leader")
        return self.s.token

    def fenced(self, ops: list[Op]) -> None:
        self._writable()
        if self.s.leader != self.host:
            raise NotLeader("leadership is gone")
        self.transaction(ops)

    def lock(self, name: str, timeout_s: float) -> AbstractContextManager[None]:
        raise OperationFailed("not simulated")

    def close(self) -> None: ...


class SimLocal:
    """A host's hypervisor as its agent sees it."""

    def __init__(self, world: World, host: str) -> None:
        self.w, self.host = world, host

    def running(self) -> list[LocalVm] | None:
        h = self.w.hosts[self.host]
        if not h.libvirtd:
            return None
        return [LocalVm(n, self.w.uuid(n), e) for n, e in sorted(h.running.items())]

    def power_off(self, names: list[str], deadline_s: float) -> set[str]:
        h = self.w.hosts[self.host]
        if not h.libvirtd:
            return set()
        for n in names:
            h.running.pop(n, None)
        return set(names)

    def power_on(self, name: str) -> None:
        self.w.start_vm(self.host, name, None)


class SimWatchdog:
    def __init__(self, world: World, host: str, timeout_s: float) -> None:
        self.w, self.host, self.timeout_s = world, host, timeout_s

    @property
    def armed(self) -> bool:
        return self.w.hosts[self.host].wd_armed

    def feed(self) -> None:
        h = self.w.hosts[self.host]
        h.wd_armed, h.wd_fed = True, self.w.now

    def disarm(self) -> None:
        self.w.hosts[self.host].wd_armed = False


class SimHosts:
    """The leader's hands on the hosts (libvirt over the simulated network)."""

    def __init__(self, world: World, leader: str) -> None:
        self.w, self.me = world, leader

    def reachable(self, host: str) -> bool:
        h = self.w.hosts[host]
        return h.powered and h.libvirtd and self.w.reach(self.me, host)

    def _need(self, host: str) -> Host:
        if not self.reachable(host):
            raise HostUnreachable(f"{host} unreachable")
        return self.w.hosts[host]

    def facts(self, host: str) -> list[DomainFacts]:
        h = self._need(host)
        return [DomainFacts(n, self.w.uuid(n), n in h.running, 1, {}, False,
                            h.running.get(n, e), {"name": n}, None)
                for n, e in sorted(h.defined.items())]

    def capacity(self, host: str) -> tuple[int, int]:
        h = self._need(host)
        return h.memory, h.memory - len(h.running)

    def start(self, host: str, vm: StoredVm, epoch: int) -> None:
        self._need(host)
        self.w.start_vm(host, vm.name, epoch)

    def destroy(self, host: str, name: str) -> bool:
        return self._need(host).running.pop(name, None) is not None

    def remove_stale(self, host: str, name: str, uuid: str) -> bool:
        h = self._need(host)
        if name in h.running:
            return False
        return h.defined.pop(name, None) is not None


AgentFactory = Callable[..., HostAgent]


class World:
    def __init__(self, hosts: list[str], zk: list[str], vms: dict[str, str], *,
                 settings: HaSettings | None = None, timings: Timings | None = None,
                 agent_factory: AgentFactory = HostAgent, memory: int = 8) -> None:
        self.now = 0.0
        self.t = timings or Timings()
        self.settings = settings or HaSettings()
        self.hosts = {h: Host(h, memory=memory) for h in hosts}
        self.events: list[tuple[float, str]] = []
        self.groups: dict[str, int] = {h: 0 for h in hosts}
        self.store = Store(self, zk)
        self.store.bootstrap()
        self.clients = {h: Client(self, h) for h in hosts}
        for c in self.clients.values():
            c.update()
        self.store.sessions_update(self.clients)
        self.agent_factory = agent_factory
        self.vms = dict(vms)  # vm -> its first host
        self.twins: list[tuple[float, str, list[str]]] = []
        self._next: dict[str, float] = {}
        for h in hosts:
            self._boot_agent(h)
        for vm, h in vms.items():
            self.hosts[h].defined[vm] = 0
            self.hosts[h].running[vm] = 0

    # -- the network --------------------------------------------------------------------

    def group(self, host: str) -> int:
        return self.groups[host]

    def reach(self, a: str, b: str) -> bool:
        return (self.hosts[a].powered and self.hosts[b].powered
                and self.groups[a] == self.groups[b])

    def partition(self, *groups: set[str]) -> None:
        """Hosts in each given group form a segment of their own; others stay on 0."""
        self.groups = {h: 0 for h in self.hosts}
        for i, g in enumerate(groups, start=1):
            for h in g:
                self.groups[h] = i
        self.log(f"partition {[sorted(g) for g in groups]}")

    def heal(self) -> None:
        self.groups = {h: 0 for h in self.hosts}
        self.log("heal")

    # -- hosts --------------------------------------------------------------------------

    def uuid(self, vm: str) -> str:
        return f"uuid-{vm}"

    def start_vm(self, host: str, vm: str, epoch: int | None) -> None:
        h = self.hosts[host]
        if not (h.powered and h.libvirtd):
            raise HostUnreachable(f"{host} is down")
        if epoch is not None:
            h.defined[vm] = epoch
        elif vm not in h.defined:
            raise NotFound(vm)
        if vm not in h.running:
            h.running[vm] = h.defined[vm]

    def power_off(self, host: str, *, back_after_s: float | None = None) -> None:
        h = self.hosts[host]
        h.powered = False
        h.running.clear()
        h.agent = None
        h.ha = None
        h.wd_armed = False
        h.lease_keep = -math.inf
        h.booting_until = math.inf if back_after_s is None else self.now + back_after_s
        self.clients[host] = Client(self, host)
        self.log(f"power off {host}")

    def power_on(self, host: str) -> None:
        self.hosts[host].booting_until = self.now

    def reset(self, host: str) -> None:
        self.hosts[host].resets += 1
        self.log(f"watchdog resets {host}")
        self.power_off(host, back_after_s=self.t.boot_s)

    def stall_agent(self, host: str, seconds: float) -> None:
        self.hosts[host].agent_paused_until = self.now + seconds
        self.log(f"agent of {host} stalls {seconds:g} s")

    def crash_agent(self, host: str) -> None:
        h = self.hosts[host]
        if h.agent is not None:
            h.agent = None
            h.agent_dead_until = self.now + self.t.agent_restart_s
            self.log(f"agent of {host} crashes")

    def _boot_agent(self, host: str) -> None:
        h = self.hosts[host]
        s = self.settings
        h.agent = self.agent_factory(
            self.clients[host], host, SimLocal(self, host), SimWatchdog(self, host,
                                                                        s.watchdog_s),
            lease_s=s.lease_s, heartbeat_s=s.heartbeat_s, clock=WorldClock(self),
            keep_until=h.lease_keep,
            save_lease=lambda k, h=h: setattr(h, "lease_keep", k))
        h.agent_dead_until = math.inf
        h.agent.heartbeat()

    def log(self, what: str) -> None:
        self.events.append((round(self.now, 2), what))

    # -- time ---------------------------------------------------------------------------

    def _due(self, name: str, period: float) -> bool:
        if self.now + 1e-9 >= self._next.get(name, 0.0):
            self._next[name] = self.now + period
            return True
        return False

    def step(self) -> None:
        self.now = round(self.now + DT, 6)
        for host, h in self.hosts.items():
            if not h.powered and self.now >= h.booting_until:
                h.powered, h.libvirtd = True, True
                self.log(f"{host} booted")
                self._boot_agent(host)
            if h.powered and h.agent is None and self.now >= h.agent_dead_until:
                self._boot_agent(host)
        self.store.update()
        for c in self.clients.values():
            c.update()
        self.store.sessions_update(self.clients)
        s = self.settings
        for host, h in self.hosts.items():
            a = h.agent
            if a is None or not h.powered or self.now < h.agent_paused_until:
                continue
            if self._due(f"hb-{host}", s.heartbeat_s):
                a.heartbeat()
            if self._due(f"probe-{host}", 0.25):
                a.probe()
            if self._due(f"tick-{host}", 0.25):
                a.tick()
            if self._due(f"feed-{host}", 0.25):
                a.feed()
            if self._due(f"reconcile-{host}", 1.0):
                a.reconcile()
        for host, h in self.hosts.items():
            if h.powered and h.wd_armed and self.now - h.wd_fed > s.watchdog_s:
                self.reset(host)
        self._leaders()
        self._check()

    def _leaders(self) -> None:
        for host, h in self.hosts.items():
            c = self.clients[host]
            if not h.powered or not c.is_leader():
                h.ha = None
                continue
            if h.ha is None:
                h.ha = HaService(c, lambda: list(self.hosts), SimHosts(self, host),
                                 lambda: self.settings, strategy=MOST_FREE_MEMORY,
                                 clock=WorldClock(self),
                                 retry_s=1.0)
            if self._due(f"ha-{host}", 0.5):
                h.ha.tick()

    def _check(self) -> None:
        where: dict[str, list[str]] = {}
        for host, h in self.hosts.items():
            for vm in h.running:
                where.setdefault(vm, []).append(host)
        for vm, hs in where.items():
            if len(hs) > 1:
                self.twins.append((self.now, vm, sorted(hs)))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.step()

    def run_until(self, cond: Callable[[], bool], seconds: float) -> float | None:
        """Run until ``cond()``; the time it took, or None."""
        start = self.now
        while self.now - start < seconds:
            if cond():
                return self.now - start
            self.step()
        return None

    # -- views --------------------------------------------------------------------------

    def running_on(self, vm: str) -> list[str]:
        return sorted(h for h, x in self.hosts.items() if vm in x.running)

    def all_running(self) -> bool:
        return all(len(self.running_on(vm)) == 1 for vm in self.vms)

    def describe(self) -> dict[str, Any]:
        return {"t": self.now, "leader": self.store.leader, "quorum": sorted(self.store.quorum),
                "running": {h: sorted(x.running) for h, x in self.hosts.items()},
                "events": self.events[-20:]}
