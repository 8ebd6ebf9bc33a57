"""MTHM against an exact brute force on small multiple-knapsack instances."""

from __future__ import annotations

from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ahvlite.controller.ha.mthm import mthm, pack_memory


def first_fit_decreasing(sizes, caps) -> int:
    """Reference greedy: largest item first into the smallest knapsack it fits."""
    res = sorted(caps)
    total = 0
    for size in sorted(sizes, reverse=True):
        for i, room in enumerate(res):
            if size <= room:
                res[i] -= size
                total += size
                break
    return total


def optimum(profits, weights, caps) -> int:
    best = 0
    for assign in product(range(len(caps) + 1), repeat=len(weights)):
        load = [0] * len(caps)
        for j, k in enumerate(assign):
            if k < len(caps):
                load[k] += weights[j]
        if all(load[i] <= caps[i] for i in range(len(caps))):
            best = max(best, sum(profits[j] for j, k in enumerate(assign) if k < len(caps)))
    return best


def check_valid(packing, profits, weights, caps) -> None:
    load = [0] * len(caps)
    for j, k in enumerate(packing.assignment):
        if k is not None:
            load[k] += weights[j]
    assert all(load[i] <= caps[i] for i in range(len(caps))), (load, caps)
    assert packing.profit == sum(profits[j] for j, k in enumerate(packing.assignment)
                                 if k is not None)


# A fixed 9-item, 2-knapsack instance with profits unlike weights (optimum 350).
MT_P = [80, 20, 60, 40, 60, 60, 65, 25, 30]
MT_W = [40, 10, 40, 30, 50, 50, 55, 25, 40]
MT_C = [100, 150]


def test_fixed_instance_reaches_the_brute_force_optimum():
    packing = mthm(MT_P, MT_W, MT_C)
    check_valid(packing, MT_P, MT_W, MT_C)
    assert optimum(MT_P, MT_W, MT_C) == 350
    assert packing.profit == 350


@pytest.mark.parametrize(("sizes", "caps", "best"), [
    ([512, 512, 512], [1024, 512], 1536),   # exact fit over two knapsacks
    ([700, 600, 500], [1000, 800], 1300),   # greedy 700 first would still reach 1300
    ([300, 300, 300, 300], [500, 700], 900),
    ([900], [800, 800], 0),                  # too large anywhere
    ([], [100], 0),
    ([1, 4, 6], [5, 6], 11),                 # the rearrangement alone would strand the 6
    ([29, 28, 29, 25], [53], 53),            # 29 out, {28, 25} in: smallest-first fill
])
def test_memory_packing_known_instances(sizes, caps, best):
    packing = pack_memory(sizes, caps)
    check_valid(packing, sizes, sizes, caps)
    assert optimum(sizes, sizes, caps) == best
    assert packing.profit == best


def test_second_improvement_replaces_one_by_several():
    # Greedy puts the 60 into the 100-knapsack; two 50s (100) are better.
    packing = pack_memory([60, 50, 50], [100])
    assert packing.profit == 100
    assert packing.assignment == (None, 0, 0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=0, max_size=6),
       st.lists(st.integers(0, 60), min_size=1, max_size=3))
def test_never_invalid_never_above_optimum(weights, caps):
    packing = pack_memory(weights, caps)
    check_valid(packing, weights, weights, caps)
    best = optimum(weights, weights, caps)
    assert packing.profit <= best
    # Improvements only add to the greedy, and first-fit decreasing packs at least half
    # of the optimum ({k+1} against {k, k} in a 2k knapsack comes arbitrarily close).
    assert packing.profit >= first_fit_decreasing(weights, caps)
    assert 2 * packing.profit >= best


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 30)), max_size=6),
       st.lists(st.integers(0, 50), min_size=1, max_size=3))
def test_general_profits_valid(items, caps):
    profits = [p for p, _ in items]
    weights = [w for _, w in items]
    packing = mthm(profits, weights, caps)
    check_valid(packing, profits, weights, caps)
    assert packing.profit <= optimum(profits, weights, caps)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        mthm([1], [1, 2], [3])
    with pytest.raises(ValueError):
        pack_memory([-1], [3])
