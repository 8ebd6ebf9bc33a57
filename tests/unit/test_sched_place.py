"""The one placement entry point: by memory, by the ADS rules (with and without host
loads), with a check each candidate must pass (pure)."""

from __future__ import annotations

import pytest

from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.model import AntiAffinityGroup, Rules, VmHostAffinity
from ahvlite.sched.place import AdsRules, Want, place
from ahvlite.sched.poweron import HostLoad


def vm(mib: int) -> Want:
    return Want("v", mib)


HOSTS = [HostCapacity("h1", 8192, 1000), HostCapacity("h2", 8192, 6000),
         HostCapacity("h3", 4096, 3000), HostCapacity("h4", 16384, 0, reachable=False)]


def test_most_free_memory_wins_and_ties_break_by_name():
    assert place(HOSTS, vm(512)) == "h2"
    assert place([HostCapacity("b", 100, 50), HostCapacity("a", 100, 50)], vm(10)) == "a"


def test_pending_memory_of_the_same_batch_counts():
    assert place(HOSTS, vm(512), pending_mib={"h2": 5500}) == "h3"


def test_requested_host_is_honoured_or_refused_clearly():
    assert place(HOSTS, vm(512), requested="h1") == "h1"
    with pytest.raises(InvalidSpec) as e:
        place(HOSTS, vm(512), requested="h9")
    assert e.value.field == "host" and "h1" in e.value.allowed
    with pytest.raises(HostUnreachable):
        place(HOSTS, vm(512), requested="h4")
    with pytest.raises(Conflict):
        place(HOSTS, vm(2000), requested="h1")
    assert place(HOSTS, vm(2000), requested="h1", need_free_mib=0) == "h1"


def test_memory_above_every_host_is_invalid_input_not_a_conflict():
    with pytest.raises(InvalidSpec) as e:
        place(HOSTS, vm(20000))
    assert e.value.field == "memory_mib" and "16384" in e.value.allowed
    with pytest.raises(Conflict):
        place(HOSTS, vm(7000))


def test_unreachable_hosts_are_skipped():
    assert place([HostCapacity("a", 100, 90, reachable=False), HostCapacity("b", 100, 10)],
                 vm(5)) == "b"
    with pytest.raises(HostUnreachable):
        place([HostCapacity("a", 100, 90, reachable=False)], vm(5))


# -- ADS power-on placement (vm create: host loads; HA: memory only) --------------------

TWO = [HostCapacity("a", 8192, 6000), HostCapacity("b", 8192, 4000)]


def ads(rules: Rules | None = None, loads: dict[str, HostLoad | None] | None = None) -> AdsRules:
    return AdsRules(lambda: rules or Rules(), loads=None if loads is None else lambda: loads)


def test_ads_balances_cpu_where_loads_are_known_and_memory_where_not():
    busy_a = {"a": HostLoad(2, (("x", 2),)), "b": HostLoad(2, ())}
    assert place(TWO, Want("v", 512, 1), strategy=ads(loads=busy_a)) == "b"
    assert place(TWO, Want("v", 512, 1), strategy=ads()) == "a"  # no loads: memory
    # A host whose load could not be read is placed by memory and rules alone.
    assert place(TWO, Want("v", 512, 1), strategy=ads(loads={"a": None, "b": None})) == "a"


def test_ads_keeps_anti_affinity_with_what_runs_and_says_why_when_nothing_is_left():
    rules = Rules(anti_affinity=(AntiAffinityGroup("g", ("v", "x", "y")),))
    loads = {"a": HostLoad(2, (("x", 1),)), "b": HostLoad(2, ())}
    assert place(TWO, Want("v", 512, 1), strategy=ads(rules, loads)) == "b"
    with pytest.raises(Conflict, match=r"under the ADS rules.*anti-affinity"):
        place(TWO, Want("v", 512, 1), strategy=ads(rules, loads), placed={"y": "b"})
    # A VM named by the caller is not ADS's choice to make.
    assert place(TWO, Want("v", 512, 1), strategy=ads(rules, loads), requested="a") == "a"


def test_when_only_memory_is_short_memory_placement_says_so():
    with pytest.raises(Conflict, match="no host has 7000 MiB free"):
        place(TWO, Want("v", 7000, 1), strategy=ads(loads={}))


def test_closed_hosts_take_no_new_vm_and_broken_rules_raise_unless_lenient():
    assert place(TWO, Want("v", 512, 1), strategy=ads(), closed=frozenset({"a"})) == "b"

    def broken() -> Rules:
        raise InvalidSpec("cluster state ads-rules", "x", "JSON")

    with pytest.raises(InvalidSpec):
        place(TWO, vm(512), strategy=AdsRules(broken))
    assert place(TWO, vm(512), strategy=AdsRules(broken, lenient=True)) == "a"
    assert place(TWO, vm(512), strategy=AdsRules(lambda: Rules(
        host_affinity=(VmHostAffinity("r", ("v",), ("b",), "must"),)))) == "b"


# -- with a check per candidate (live migration) ----------------------------------------

def test_the_first_host_passing_the_check_wins_in_free_memory_order():
    hosts = [*TWO, HostCapacity("c", 8192, 7000, reachable=False)]
    tried = []

    def check(host: str) -> None:
        tried.append(host)
        if host == "a":
            raise Conflict("CPU lacks avx")

    assert place(hosts, vm(512), accept=check) == "b" and tried == ["a", "b"]
    with pytest.raises(Conflict) as e:
        place(hosts, vm(512), accept=lambda h: check("a"), down={"c": "timeout"})
    assert e.value.message == ("no host can take v: a: CPU lacks avx; b: CPU lacks avx; "
                               "c: unreachable (timeout)")
    with pytest.raises(Conflict, match="no other host"):
        place([], vm(512), accept=check)
