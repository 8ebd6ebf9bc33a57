"""Stats maths (counters -> rates) and the VM state cache: pure logic."""

from __future__ import annotations

from ahvlite.controller.hostmon import apply_event
from ahvlite.sched.stats import History, host_stats, select
from ahvlite.virt.stats import DomainCounters, HostCounters


def dom(cpu_ns, rx=0, rd=0, uuid="u1", vcpus=2):
    return DomainCounters("vm1", uuid, "running", vcpus, cpu_ns, 524288, 1048576, rx, 0, rd, 0)


def host(at, busy, total, *doms):
    return HostCounters(at, 4, busy, total, 8 * 1048576, 6 * 1048576, tuple(doms))


def test_rates_from_two_samples():
    a = host(100.0, 1_000, 10_000, dom(0))
    b = host(110.0, 3_500, 20_000, dom(10 * 10**9, rx=5_000, rd=20_480))
    s = host_stats("h1", a, b, wall_at=1.0)
    assert s.interval_s == 10.0 and s.cpu_pct == 25.0
    assert s.memory_total_mib == 8192 and s.memory_used_mib == 2048 and s.memory_pct == 25.0
    vm = s.vms[0]
    assert vm.cpu_pct == 50.0  # 1 s of CPU per second over 2 vCPUs
    assert vm.net_rx_bytes_per_s == 500 and vm.disk_read_bytes_per_s == 2048
    assert vm.memory_mib == 512 and vm.memory_max_mib == 1024


def test_first_sample_restart_and_new_vm_have_no_rates():
    first = host_stats("h1", None, host(1.0, 1, 2, dom(5)), 0)
    assert first.cpu_pct is None and first.vms[0].cpu_pct is None
    restarted = host_stats("h1", host(1.0, 1, 2, dom(10**12)), host(2.0, 2, 4, dom(5)), 0)
    assert restarted.vms[0].cpu_pct is None  # counter went backwards: VM restarted
    other = host_stats("h1", host(1.0, 1, 2, dom(0, uuid="a")),
                       host(2.0, 2, 4, dom(10**9, uuid="b")), 0)
    assert other.vms[0].cpu_pct is None


def test_history_is_bounded_and_select_filters():
    h = History(size=3)
    for i in range(5):
        h.add(host_stats("h1", None, host(float(i), 1, 2, dom(1)), float(i)))
    assert [s.at for s in h.series("h1")] == [2.0, 3.0, 4.0] and h.latest("h2") is None
    recs = [h.latest("h1").to_dict()]
    assert select(recs, "h1", "vm1")[0]["vms"][0]["name"] == "vm1"
    assert select(recs, "h2", None) == [] and select(recs, None, "nope") == []


def test_lifecycle_events_update_the_cache():
    vms: dict[str, str] = {}
    for event in ("defined", "started", "suspended"):
        apply_event(vms, event, "a")
    assert vms == {"a": "paused"}
    apply_event(vms, "stopped", "a")
    apply_event(vms, "defined", "a")  # a redefine keeps the known state
    assert vms == {"a": "shutoff"}
    apply_event(vms, "undefined", "a")
    assert vms == {}
