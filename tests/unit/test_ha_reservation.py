"""Host- and segment-based reservations and admission control (pure)."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from ahvlite.controller.ha.mthm import pack_memory
from ahvlite.controller.ha.reservation import (
    HostMem,
    VmLoad,
    admit,
    host_reservation,
    reservation,
    segment_reservation,
)
from ahvlite.controller.ha.settings import HaSettings

H3 = [HostMem("h1", 4096), HostMem("h2", 4096), HostMem("h3", 4096)]
GUARANTEE_SEG = HaSettings(mode="guarantee", reservation="segment")
GUARANTEE_HOST = HaSettings(mode="guarantee", reservation="host")


def vms(*spec):
    return [VmLoad(f"vm{i}", h, m) for i, (h, m) in enumerate(spec)]


def restartable(hosts, loads, res, f) -> bool:
    """Every loss of f hosts: their protected VMs pack into the survivors' reservations."""
    names = [h.name for h in hosts]
    for failed in combinations(names, f):
        items = [v.memory_mib for v in loads if v.protected and v.host in failed]
        caps = [res.per_host_mib[n] for n in names if n not in failed]
        if pack_memory(items, caps).unassigned():
            return False
    return True


def test_host_based_keeps_the_largest_host_free():
    hosts = [HostMem("a", 2048), HostMem("b", 8192), HostMem("c", 4096)]
    res = host_reservation(hosts, vms(("a", 1024), ("c", 3000)), 1)
    assert res.ok and res.reserved_hosts == ("b",)
    assert res.per_host_mib == {"a": 0, "b": 8192, "c": 0}
    assert res.failover_needed_mib == 3000 and res.failover_capacity_mib == 8192


def test_host_based_refuses_vms_on_the_reserved_host_and_rf3_reserves_two():
    res = host_reservation(H3, vms(("h1", 512)), 1)  # h1 is the reserved one (name order)
    assert not res.ok and res.missing_mib == 512
    res3 = host_reservation([*H3, HostMem("h4", 1024)], vms(("h4", 512)), 2)
    assert res3.ok and res3.reserved_hosts == ("h1", "h2")
    assert not host_reservation(H3[:2], vms(("h1", 64)), 2).ok  # 2 hosts cannot lose 2


def test_segment_based_spreads_the_reservation():
    loads = vms(("h1", 1024), ("h1", 512), ("h2", 1024), ("h3", 768))
    res = segment_reservation(H3, loads, 1)
    assert res.ok and restartable(H3, loads, res, 1)
    assert sum(1 for v in res.per_host_mib.values() if v > 0) >= 2  # spread, not one host
    # Every segment is the size of some protected VM.
    sizes = {v.memory_mib for v in loads}
    assert all(s in sizes for segs in res.segments_mib.values() for s in segs)
    # Less than a whole host is set aside (host-based would reserve 4096).
    assert res.failover_capacity_mib < 4096


def test_segment_based_reports_what_is_missing():
    loads = vms(("h1", 3072), ("h2", 3072), ("h3", 3072))
    res = segment_reservation(H3, loads, 1)
    assert not res.ok and res.missing_mib == 3072


def test_rf3_survives_two_losses():
    hosts = [HostMem(f"h{i}", 4096) for i in range(1, 5)]
    loads = vms(("h1", 512), ("h2", 512), ("h3", 1024), ("h4", 256))
    res = segment_reservation(hosts, loads, 2)
    assert res.ok and restartable(hosts, loads, res, 2)
    rf2 = segment_reservation(hosts, loads, 1)
    assert rf2.failover_capacity_mib < res.failover_capacity_mib


def test_unprotected_vms_use_memory_but_need_no_reservation():
    loads = [VmLoad("cvm1", "h1", 3500, protected=False), VmLoad("a", "h2", 512)]
    res = segment_reservation(H3, loads, 1)
    assert res.ok and res.per_host_mib["h1"] <= 596  # h1 has only 596 MiB left
    assert res.failover_capacity_mib == 512


def test_default_mode_reserves_nothing():
    res = reservation(HaSettings(), H3, vms(("h1", 1024)))
    assert res.kind == "none" and res.ok and set(res.per_host_mib.values()) == {0}
    assert res.failover_capacity_mib == 3 * 4096 - 1024


def test_admission_refuses_with_the_missing_memory():
    loads = vms(("h1", 2048), ("h2", 2048))
    ok = admit(GUARANTEE_SEG, H3, loads, name="small", memory_mib=512)
    assert ok.ok and ok.host is not None
    refused = admit(GUARANTEE_SEG, H3, loads, name="big", memory_mib=3072, host="h3")
    assert not refused.ok and refused.missing_mib > 0
    assert "big" in refused.message and f"{refused.missing_mib} MiB missing" in refused.message


def test_admission_host_mode_steers_away_from_the_reserved_host():
    a = admit(GUARANTEE_HOST, H3, [], name="x", memory_mib=1024)
    assert a.ok and a.host != "h1"
    r = admit(GUARANTEE_HOST, H3, [], name="x", memory_mib=1024, host="h1")
    assert not r.ok and r.missing_mib == 1024


host_sets = st.lists(st.integers(1, 8).map(lambda k: k * 1024), min_size=2, max_size=5)


@settings(max_examples=120, deadline=None)
@given(host_sets, st.lists(st.tuples(st.integers(0, 4), st.integers(1, 16).map(
    lambda k: k * 128)), max_size=10), st.sampled_from([1, 2]))
def test_segment_reservation_is_sound(totals, placed, f):
    hosts = [HostMem(f"h{i}", t) for i, t in enumerate(totals)]
    loads = [VmLoad(f"v{i}", f"h{h % len(hosts)}", m) for i, (h, m) in enumerate(placed)]
    used = {h.name: sum(v.memory_mib for v in loads if v.host == h.name) for h in hosts}
    if any(used[h.name] > h.total_mib for h in hosts):
        return  # not a state a cluster can be in
    res = segment_reservation(hosts, loads, f)
    # Never more reserved than a host has left after its VMs.
    assert all(used[h.name] + res.per_host_mib[h.name] <= h.total_mib for h in hosts)
    if res.ok:
        assert restartable(hosts, loads, res, f)
        assert res.failover_capacity_mib >= res.failover_needed_mib
    else:
        assert res.missing_mib > 0


@settings(max_examples=120, deadline=None)
@given(host_sets, st.lists(st.tuples(st.integers(0, 4), st.integers(1, 16).map(
    lambda k: k * 128)), max_size=10), st.sampled_from([1, 2]))
def test_host_reservation_is_sound(totals, placed, f):
    hosts = [HostMem(f"h{i}", t) for i, t in enumerate(totals)]
    loads = [VmLoad(f"v{i}", f"h{h % len(hosts)}", m) for i, (h, m) in enumerate(placed)]
    used = {h.name: sum(v.memory_mib for v in loads if v.host == h.name) for h in hosts}
    if any(used[h.name] > h.total_mib for h in hosts):
        return
    res = host_reservation(hosts, loads, f)
    if res.ok:
        # Any f failures: each failed host's load fits whole into a distinct surviving
        # reserved host (the reserved ones are the largest).
        names = [h.name for h in hosts]
        for failed in combinations(names, f):
            spare = sorted((h.total_mib for h in hosts
                            if h.name in res.reserved_hosts and h.name not in failed),
                           reverse=True)
            need = sorted((used[n] for n in failed if used[n]), reverse=True)
            assert len(need) <= len(spare)
            assert all(n <= s for n, s in zip(need, spare, strict=False))
    elif len(hosts) > f:
        assert res.missing_mib == sum(used[n] for n in res.reserved_hosts)


def test_moves_that_break_the_guarantee_are_refused_with_the_missing_memory():
    from ahvlite.controller.ha.reservation import admit_moves

    s = HaSettings(mode="guarantee", rf=2, reservation="host")
    hosts = [HostMem("a", 4096), HostMem("b", 4096), HostMem("c", 4096)]
    vms = [VmLoad("v1", "b", 1024), VmLoad("v2", "c", 1024)]
    res = reservation(s, hosts, vms)
    assert res.ok and res.reserved_hosts == ("a",)  # a is kept free
    assert admit_moves(s, hosts, vms, [("v1", "c")]).ok
    bad = admit_moves(s, hosts, vms, [("v1", "a")])
    assert not bad.ok and bad.missing_mib == 1024 and "MiB missing" in bad.message
    assert admit_moves(HaSettings(), hosts, vms, [("v1", "a"), ("v2", "a")]).ok
    too_big = admit_moves(HaSettings(), [HostMem("a", 1500), *hosts[1:]], vms,
                          [("v1", "a"), ("v2", "a")])
    assert not too_big.ok and "548 MiB missing" in too_big.message
