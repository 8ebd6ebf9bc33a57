"""The fast planner: relieve the hottest host with the cheapest moves, one host at a time.

For large clusters (64 hosts x 2000 VMs well under a second) and as the fallback when
CP-SAT finds nothing in its time. Every move is chosen against the cluster as it is at
that step, so the sequence is feasible by construction (memory, rules, anti-affinity).

For a hot host it weighs these ways out and takes the cheapest:
- one move that clears the host alone: the cheapest VM with enough demand that has a
  destination staying under its thresholds, or, when no destination has the memory or
  CPU headroom, a two-step chain that first moves one VM off a destination to a third
  host to make that room (the case in AHV's documentation);
- the cheapest set of VMs whose CPU covers the overflow (a small 0/1 knapsack), each
  then given the cheapest destination that stays cool;
- a greedy cover: moves by cost per unit of relief until the host is cool (also the
  one that weighs storage-service contention, and the partial answer when nothing
  clears the host).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ahvlite.sched.instance import EPS, Instance, Loads

Step = tuple[int, int]  # (vm index, destination host index)
_RETRIES = 5


@dataclass(frozen=True)
class _Option:
    cost: int
    steps: tuple[Step, ...]


def _best_dest(inst: Instance, loads: Loads, v: int, avoid: int = -1) -> tuple[int, int] | None:
    """(cost, host) of the cheapest destination that takes ``v`` and stays cool."""
    best: tuple[int, float, int] | None = None
    for t in inst.allowed[v]:
        if t == avoid or not loads.can_receive(v, t) or not loads.stays_cool(v, t):
            continue
        # Among equal costs prefer the least loaded host: the move leaves most headroom.
        key = (inst.dest_cost(v, t),
               loads.cpu[t] / inst.cpu_limit[t] if inst.cpu_limit[t] else 0.0, t)
        if best is None or key < best:
            best = key
    return None if best is None else (best[0], best[2])


def _clears(inst: Instance, loads: Loads, h: int, v: int) -> bool:
    return (inst.cpu[v] >= loads.cpu_over(h) - EPS
            and inst.storage[v] >= loads.sto_over(h) - EPS)


def _chain(inst: Instance, loads: Loads, h: int, v: int) -> _Option | None:
    """Make room for ``v`` on another host that lacks memory or CPU headroom for it, by
    first moving one VM from there to a third host."""
    best: _Option | None = None
    for t in inst.allowed[v]:
        if t == h or not inst.schedulable[t] or not loads.group_ok(v, t):
            continue
        short_mem = loads.mem[t] + inst.mem[v] - inst.mem_cap[t]
        short_cpu = loads.cpu[t] + inst.cpu[v] - inst.cpu_limit[t]
        lim = inst.sto_limit[t]
        short_sto = 0.0 if lim is None else loads.sto[t] + inst.storage[v] - lim
        if short_mem <= 0 and short_cpu <= EPS and short_sto <= EPS:
            continue  # it fits already: no chain needed
        cost_v = inst.dest_cost(v, t)
        if best is not None and cost_v >= best.cost:
            continue
        for u in sorted(loads.on[t], key=lambda u: (inst.move_cost[u], u)):
            if best is not None and cost_v + inst.move_cost[u] >= best.cost:
                break  # sorted by cost: nothing later is cheaper
            if (u == v or not inst.movable(u) or inst.mem[u] < short_mem
                    or inst.cpu[u] < short_cpu - EPS or inst.storage[u] < short_sto - EPS):
                continue
            dest = _best_dest(inst, loads, u, avoid=h)
            if dest is None:
                continue
            cost = dest[0] + cost_v
            if best is None or cost < best.cost:
                best = _Option(cost, ((u, dest[1]), (v, t)))
    return best


def _single(inst: Instance, loads: Loads, h: int) -> _Option | None:
    best: _Option | None = None
    for v in sorted(loads.on[h], key=lambda v: (inst.move_cost[v], v)):
        if not inst.movable(v) or not _clears(inst, loads, h, v):
            continue
        if best is not None and inst.move_cost[v] >= best.cost:
            break  # sorted by base cost: nothing later can be cheaper
        dest = _best_dest(inst, loads, v)
        if dest is not None:
            if best is None or dest[0] < best.cost:
                best = _Option(dest[0], ((v, dest[1]),))
            continue
        chained = _chain(inst, loads, h, v)
        if chained is not None and (best is None or chained.cost < best.cost):
            best = chained
    return best


def _relief(inst: Instance, loads: Loads, h: int, v: int) -> float:
    r = 0.0
    co, so = loads.cpu_over(h), loads.sto_over(h)
    if co > EPS:
        r += min(inst.cpu[v], co) / co
    if so > EPS:
        r += min(inst.storage[v], so) / so
    return r


def _cover(inst: Instance, loads: Loads, h: int) -> tuple[_Option, bool] | None:
    """Greedy by cost per relief on a scratch copy; (moves, whether h ends cool)."""
    scratch = loads.copy()
    steps: list[Step] = []
    cost = 0
    while scratch.hot(h):
        best: tuple[float, int, int, int] | None = None
        for v in scratch.on[h]:
            if not inst.movable(v):
                continue
            relief = _relief(inst, scratch, h, v)
            if relief <= EPS:
                continue
            if best is not None and inst.move_cost[v] / relief >= best[0]:
                continue
            dest = _best_dest(inst, scratch, v)
            if dest is None:
                continue
            key = dest[0] / relief
            if best is None or (key, v) < (best[0], best[1]):
                best = (key, v, dest[1], dest[0])
        if best is None:
            break
        _, v, t, c = best
        scratch.move(v, t)
        steps.append((v, t))
        cost += c
    if not steps:
        return None
    return _Option(cost, tuple(steps)), not scratch.hot(h)


def _knapsack(inst: Instance, loads: Loads, h: int) -> _Option | None:
    """Cheapest set of VMs whose CPU covers the overflow (0/1 min-cost cover, by
    dynamic programming over whole percent of a core), then destinations for them
    largest first; a VM that finds none is left out and the cover computed again."""
    need = math.ceil(loads.cpu_over(h))
    if need <= 0 or loads.sto_over(h) > EPS:
        return None  # storage contention: the greedy cover weighs both resources
    banned: set[int] = set()
    for _ in range(_RETRIES):
        items = []
        for v in loads.on[h]:
            if v in banned or not inst.movable(v) or int(inst.cpu[v]) <= 0:
                continue
            dest = _best_dest(inst, loads, v)
            if dest is None:
                continue
            items.append((v, int(inst.cpu[v]), dest[0]))
        inf = float("inf")
        best = [inf] * (need + 1)
        chosen = [0] * (need + 1)
        best[0] = 0
        for i, (_, r, c) in enumerate(items):
            for j in range(need, -1, -1):
                if best[j] == inf:
                    continue
                k = min(need, j + r)
                if best[j] + c < best[k]:
                    best[k] = best[j] + c
                    chosen[k] = chosen[j] | (1 << i)
        if best[need] == inf:
            return None
        picked = sorted((items[i] for i in range(len(items)) if chosen[need] >> i & 1),
                        key=lambda it: -inst.cpu[it[0]])
        scratch = loads.copy()
        steps: list[Step] = []
        cost = 0
        for v, _, _ in picked:
            dest = _best_dest(inst, scratch, v)
            if dest is None:
                banned.add(v)
                break
            scratch.move(v, dest[1])
            steps.append((v, dest[1]))
            cost += dest[0]
        else:
            return _Option(cost, tuple(steps)) if not scratch.hot(h) else None
    return None


def _run(inst: Instance, priority: list[int]) -> tuple[float, int, list[Step]]:
    """Relieve hot hosts in ``priority`` order (first hot one first), host by host;
    (overflow left, cost, moves)."""
    loads = Loads(inst)
    moves: list[Step] = []
    cost = 0
    stuck: set[int] = set()
    for _ in range(inst.n_vms + inst.n_hosts):
        h = next((h for h in priority if h not in stuck and loads.hot(h)), None)
        if h is None:
            break
        options = [o for o in (_single(inst, loads, h), _knapsack(inst, loads, h))
                   if o is not None]
        cover = _cover(inst, loads, h)
        if cover is not None and cover[1]:
            options.append(cover[0])
        choice: _Option | None = min(options, key=lambda o: (o.cost, len(o.steps)),
                                     default=None)
        if choice is None and cover is not None:
            choice = cover[0]  # relieves part of it: better than nothing
        if choice is None:
            stuck.add(h)  # nothing helps this host; the plan reports it as remaining
            continue
        for v, t in choice.steps:
            loads.move(v, t)
            moves.append((v, t))
        cost += choice.cost
    left = sum(loads.cpu_over(h) + loads.sto_over(h) for h in range(inst.n_hosts))
    return left, cost, moves


def solve(inst: Instance, *, tries: int = 4, seed: int = 0) -> list[Step]:
    """Moves, in order, that relieve every hotspot they can.

    Hot hosts compete for the same spare room, so the order in which they are relieved
    matters: a few orders are tried (hottest first, least hot first, then seeded
    shuffles) and the plan leaving the least overflow, then costing least, wins.
    """
    loads = Loads(inst)
    hot = [h for h in range(inst.n_hosts) if loads.hot(h)]
    if not hot:
        return []

    def heat(h: int) -> float:
        return (loads.cpu_over(h) / max(inst.cpu_limit[h], EPS)
                + loads.sto_over(h) / max(inst.sto_limit[h] or 0, EPS))

    orders = [sorted(hot, key=lambda h: (-heat(h), h)), sorted(hot, key=lambda h: (heat(h), h))]
    rng = random.Random(seed)
    while len(orders) < min(tries, math.factorial(min(len(hot), 6))):
        shuffled = hot[:]
        rng.shuffle(shuffled)
        orders.append(shuffled)
    best: tuple[float, int, list[Step]] | None = None
    for order in orders[:max(1, tries)]:
        left, cost, moves = _run(inst, order)
        if best is None or (round(left, 6), cost) < (round(best[0], 6), best[1]):
            best = (left, cost, moves)
    assert best is not None
    return best[2]
