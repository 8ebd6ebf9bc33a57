"""MTHM: Martello and Toth's heuristic for the 0-1 multiple knapsack problem (pure).

S. Martello, P. Toth, "Heuristic algorithms for the multiple knapsack problem",
Computing 27 (1981) 93-112; also "Knapsack Problems" (Wiley 1990), section 6.6.2.
Given items (profit p_j, weight w_j) and knapsacks (capacity c_i), choose disjoint
item sets, one per knapsack, within capacity, maximising the total profit. Four phases:

1. initial solution: items by decreasing p/w, knapsacks by increasing capacity; fill
   knapsack 1 greedily with the items in order, then knapsack 2 with what is left ...
2. rearrangement: take the assigned items back in reverse order and deal them out to
   the knapsacks round-robin (each to the next knapsack where it fits), which spreads
   the residual capacity; then greedily add unassigned items where they fit;
3. first improvement: for each pair of assigned items in different knapsacks, swapping
   them may free enough room in the knapsack of the larger one to take the most
   profitable unassigned item that then fits: do it;
4. second improvement: in reverse order, replace one assigned item by a set of
   unassigned items of larger total profit that fits into its knapsack's residual.

Two changes to the published procedure: the rearrangement can drop an item the greedy
had placed, so phases 3 and 4 run on both the greedy and the rearranged solution and
the better one is kept (never below the greedy's); and phase 4 also tries filling the
freed room smallest item first. With profit = weight the greedy is first-fit
decreasing, which packs at least half of the optimum ({k+1} against {k, k} in a 2k
knapsack is the classic worst case); the improvements only ever add profit.

For HA segment sizing profit = weight = VM memory: MTHM packs as much VM memory into
the reserved segments as it can. It runs in O(n^2) after sorting and is within a few
per cent of optimal on the instances of the paper; here every packing it returns is
valid (tests check it against brute force on small instances), so a reservation it
accepts is a real restart plan, and one it rejects errs towards reserving more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Packing:
    assignment: tuple[int | None, ...]  # per item (input order): knapsack index or None
    profit: int

    def unassigned(self) -> list[int]:
        return [j for j, k in enumerate(self.assignment) if k is None]


def mthm(profits: Sequence[int], weights: Sequence[int], capacities: Sequence[int]) -> Packing:
    """Assign items to knapsacks with MTHM; indices refer to the input order."""
    n, m = len(weights), len(capacities)
    if len(profits) != n:
        raise ValueError("profits and weights differ in length")
    if any(w < 0 for w in weights) or any(c < 0 for c in capacities):
        raise ValueError("weights and capacities must be non-negative")
    if n == 0 or m == 0:
        return Packing(tuple([None] * n), 0)
    # Sort items by decreasing p/w (ties: heavier first, then input order) and
    # knapsacks by increasing capacity; map back at the end.
    items = sorted(range(n), key=lambda j: (-(profits[j] / weights[j]) if weights[j] else
                                            float("-inf"), -weights[j], j))
    sacks = sorted(range(m), key=lambda i: (capacities[i], i))
    p = [profits[j] for j in items]
    w = [weights[j] for j in items]
    c = [capacities[i] for i in sacks]
    y: list[int | None] = [None] * n  # sorted item -> sorted knapsack

    # 1. initial solution: knapsack after knapsack, greedy.
    res = list(c)
    for i in range(m):
        for j in range(n):
            if y[j] is None and w[j] <= res[i]:
                y[j] = i
                res[i] -= w[j]
    greedy = (list(y), res)

    # 2. rearrangement: reverse order, round-robin from the current knapsack.
    res = list(c)
    nxt = 0
    for j in reversed(range(n)):
        if y[j] is None:
            continue
        target = None
        for step in range(m):
            i = (nxt + step) % m
            if w[j] <= res[i]:
                target = i
                break
        y[j] = target
        if target is not None:
            res[target] -= w[j]
            nxt = (target + 1) % m
    for j in range(n):
        if y[j] is None:
            for i in range(m):
                if w[j] <= res[i]:
                    y[j] = i
                    res[i] -= w[j]
                    break

    # The rearrangement spreads residual room for the improvements, but it can drop an
    # item the greedy had placed (weights [6, 4, 1] into [5, 6]: the greedy packs all
    # 11, round-robin strands the 6). So both solutions go through phases 3 and 4 and
    # the better one wins: never worse than the greedy, still O(n^2).
    rearranged = (y, res)
    best: list[int | None] | None = None
    best_profit = -1
    for cand, cres in (rearranged, greedy):
        _improve(cand, cres, p, w)
        profit = sum(p[j] for j in range(n) if cand[j] is not None)
        if profit > best_profit:
            best, best_profit = cand, profit
    assert best is not None
    y = best

    assignment: list[int | None] = [None] * n
    for pos, j in enumerate(items):
        yj = y[pos]
        assignment[j] = None if yj is None else sacks[yj]
    total = sum(profits[j] for j in range(n) if assignment[j] is not None)
    return Packing(tuple(assignment), total)


def _improve(y: list[int | None], res: list[int], p: Sequence[int],
             w: Sequence[int]) -> None:
    """Phases 3 and 4 on one solution, in place (items and knapsacks in sorted order)."""
    n = len(w)
    # 3. first improvement: pairwise interchanges that make room for a free item.
    for j in range(n):
        if y[j] is None:
            continue
        for k in range(j + 1, n):
            yj, yk = y[j], y[k]
            if yj is None or yk is None or yj == yk:
                continue
            h, lo = (j, k) if w[j] >= w[k] else (k, j)
            d = w[h] - w[lo]
            yh, yl = y[h], y[lo]
            assert yh is not None and yl is not None
            free = [u for u in range(n) if y[u] is None]
            if not free or d > res[yl] or res[yh] + d < min(w[u] for u in free):
                continue
            fits = [u for u in free if w[u] <= res[yh] + d]
            if not fits:
                continue
            t = max(fits, key=lambda u: (p[u], -u))
            res[yh] += d - w[t]
            res[yl] -= d
            y[t] = yh
            y[h], y[lo] = yl, yh

    # 4. second improvement: one assigned item out, a more profitable set in.
    for j in reversed(range(n)):
        yj = y[j]
        if yj is None:
            continue
        # The published phase fills the room in item order (largest first for memory);
        # filling it smallest first as well finds {28, 25} for a 29 in a 53 room,
        # which largest-first (29 again) misses. The better fill is taken.
        free = [k for k in range(n) if y[k] is None]
        best_set: list[int] = []
        best_room = 0
        for order in (free, sorted(free, key=lambda k: (w[k], k))):
            room = res[yj] + w[j]
            chosen = []
            for k in order:
                if w[k] <= room:
                    chosen.append(k)
                    room -= w[k]
            if sum(p[k] for k in chosen) > sum(p[k] for k in best_set):
                best_set, best_room = chosen, room
        if sum(p[k] for k in best_set) > p[j]:
            for k in best_set:
                y[k] = yj
            res[yj] = best_room
            y[j] = None


def pack_memory(sizes_mib: Sequence[int], capacities_mib: Sequence[int]) -> Packing:
    """MTHM with profit = weight: pack as much memory as possible."""
    return mthm(sizes_mib, sizes_mib, capacities_mib)
