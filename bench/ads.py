"""ADS planner: scale, optimality gap of the heuristic, and moves vs a balancer (pure).

Seeded scenarios (``scenario``), no lab. One run prints, side by side:

* plan time and peak memory (tracemalloc) for 64 hosts x 2000 VMs with a few hot hosts
  (targets: <= 1 s, <= 500 MB), heuristic (what ``auto`` uses at that size);
* on small clusters, moves and memory moved by the heuristic vs the CP-SAT optimum
  (target: heuristic <= 1.1x the optimum's memory moved);
* moves of ADS vs a balance-everything baseline that, like DRS, moves VMs from the
  most to the least loaded host until the hosts' CPU utilization is within a band
  (target: ADS >= 5x fewer moves).
"""

from __future__ import annotations

import random
import resource
import statistics
import time
import tracemalloc

from ahvlite.sched.demand import estimate
from ahvlite.sched.model import Host, Problem, Vm
from ahvlite.sched.plan import make_plan

GIB = 1024
HISTORY = 12  # samples per VM (2 min at 10 s stats)


def scenario(seed: int, hosts: int, vms: int, *, hot: int, cores: int = 32,
             mem_gib: int = 512, skew: float = 0.0) -> Problem:
    """``vms`` VMs over ``hosts`` hosts, about 50 % busy on average; ``hot`` hosts get
    busier VMs (about 95 %); ``skew`` spreads the other hosts' load (0.5: 25-75 %)."""
    rng = random.Random(seed)
    factor = [rng.uniform(1 - skew, 1 + skew) for _ in range(hosts)]
    hs = [Host(f"h{i:02d}", cores * 100.0, mem_gib * GIB) for i in range(hosts)]
    mem = [0] * hosts
    cpu = [0.0] * hosts
    out = []
    hot_set = set(rng.sample(range(hosts), hot))
    for j in range(vms):
        h = j % hosts
        m = rng.choice([1, 2, 4, 4, 8, 8, 16]) * GIB
        if mem[h] + m > hs[h].memory_mib * 0.8:
            m = GIB
        # Mean utilization about 50 %; a hot host's VMs are busier (about 95 %).
        level = rng.uniform(0.2, 1.8) * 0.5 * cores * 100 * hosts / vms
        level *= 1.9 if h in hot_set else factor[h]
        hist = tuple(max(0.0, level + rng.gauss(0, level * 0.1)) for _ in range(HISTORY))
        mem[h] += m
        cpu[h] += estimate(hist)
        out.append(Vm(f"vm{j:05d}", hs[h].name, m, hist, pinned=rng.random() < 0.03))
    return Problem(tuple(hs), tuple(out))


def balance_everything(p: Problem, band_pct: float = 5.0) -> int:
    """DRS-like peer: move the cheapest-to-move VM that narrows the spread from the most
    to the least loaded host, until utilizations are within ``band_pct`` points."""
    where = {v.name: v.host for v in p.vms}
    cap = {h.name: h.cpu_capacity_pct for h in p.hosts}
    memcap = {h.name: h.memory_mib for h in p.hosts}
    demand = {v.name: estimate(v.cpu_history_pct) for v in p.vms}
    memory = {v.name: v.memory_mib for v in p.vms}
    load = {h: 0.0 for h in cap}
    used = {h: 0 for h in cap}
    for v in p.vms:
        load[v.host] += demand[v.name]
        used[v.host] += v.memory_mib
    moves = 0
    pinned = {v.name for v in p.vms if v.pinned}
    for _ in range(len(p.vms) * 2):
        util = {h: 100 * load[h] / cap[h] for h in cap}
        hi = max(util, key=lambda h: util[h])
        lo = min(util, key=lambda h: util[h])
        gap = util[hi] - util[lo]
        if gap <= band_pct:
            break
        best = None
        for v, h in where.items():
            if h != hi or v in pinned or used[lo] + memory[v] > memcap[lo]:
                continue
            new_gap = abs((load[hi] - demand[v]) / cap[hi] - (load[lo] + demand[v]) / cap[lo])
            if 100 * new_gap < gap and (best is None or demand[v] > demand[best]):
                best = v
        if best is None:
            break
        where[best] = lo
        load[hi] -= demand[best]
        load[lo] += demand[best]
        used[hi] -= memory[best]
        used[lo] += memory[best]
        moves += 1
    return moves


def main() -> None:
    print("ADS planner (pure; seeded scenarios)")
    big = scenario(1, 64, 2000, hot=4)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        plan = make_plan(big)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()  # measured apart: tracing slows allocation down
    make_plan(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  64 hosts x 2000 VMs, {len(plan.hotspots)} hotspots, solver {plan.solver}: "
          f"{len(plan.moves)} moves, {plan.memory_moved_mib / GIB:.0f} GiB moved, "
          f"{len(plan.remaining)} hot after")
    print(f"    plan time (median of 3): {statistics.median(times) * 1000:8.1f} ms "
          "(target <= 1000 ms)")
    print(f"    peak traced memory:      {peak / 2**20:8.1f} MB of the plan; process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          "(target <= 500 MB)")

    ratios, h_moves, c_moves, h_mem, c_mem, solved = [], 0, 0, 0, 0, 0
    for seed in range(20):
        small = scenario(100 + seed, 6, 36, hot=2, cores=8, mem_gib=64)
        c = make_plan(small, solver="cpsat", time_limit_s=10)
        h = make_plan(small, solver="heuristic")
        if c.status != "optimal" or h.remaining or not c.moves:
            continue
        solved += 1
        h_moves += len(h.moves)
        c_moves += len(c.moves)
        h_mem += h.memory_moved_mib
        c_mem += c.memory_moved_mib
        ratios.append(h.cost_mib / c.cost_mib)
    print(f"  heuristic vs CP-SAT optimum, {solved} small clusters (6 hosts x 36 VMs, "
          "both resolve every hotspot):")
    print(f"    moves {h_moves} vs {c_moves}; memory moved {h_mem / GIB:.0f} vs "
          f"{c_mem / GIB:.0f} GiB: ratio {h_mem / max(c_mem, 1):.3f} (target <= 1.1)")
    if ratios:
        print(f"    cost ratio per case: mean {statistics.mean(ratios):.3f}, "
              f"worst {max(ratios):.3f}")

    print("  ADS vs balance-everything (DRS-like, 5-point band); other hosts 25-75 % busy;"
          " sums over 5 seeds:")
    for hosts, count, hot in ((16, 400, 0), (16, 400, 1), (32, 800, 2), (16, 400, 2),
                              (16, 200, 2)):
        ads_moves = base_moves = 0
        for seed in range(5):
            p = scenario(200 + seed, hosts, count, hot=hot, skew=0.5)
            ads_moves += len(make_plan(p).moves)
            base_moves += balance_everything(p)
        ratio = f"{base_moves / ads_moves:.1f}x fewer" if ads_moves else "none vs some"
        print(f"    {hosts:2d} hosts x {count:3d} VMs, {hot} hot: ADS {ads_moves:3d} moves, "
              f"balancer {base_moves:3d}: {ratio} (target >= 5x)")

if __name__ == "__main__":
    main()
