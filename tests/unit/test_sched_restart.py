"""HA restarts: order, placement by memory or by the ADS rules (pure)."""

from __future__ import annotations

from ahvlite.errors import InvalidSpec
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.model import AntiAffinityGroup, Rules, VmHostAffinity
from ahvlite.sched.place import AdsRules
from ahvlite.sched.restart import VmRecord, plan_restarts
from ahvlite.spec.labels import HA_PRIORITY_LABEL, PINNED_LABEL, ROLE_LABEL


def rec(name, mem, host="dead", running=True, **labels):
    return VmRecord(name, host, mem, running, dict(labels))


def lenient(rules: Rules) -> AdsRules:
    """ADS placement as the leader's HA service uses it."""
    return AdsRules(lambda: rules, lenient=True)


HEALTHY = [HostCapacity("h2", 4096, 1024), HostCapacity("h3", 4096, 2048)]


def test_restart_order_follows_priority_then_size():
    lost = [rec("low", 256), VmRecord("high", "dead", 128, True, {HA_PRIORITY_LABEL: "10"}),
            rec("big", 1024), VmRecord("mid", "dead", 128, True, {HA_PRIORITY_LABEL: "5"})]
    plan = plan_restarts(lost, HEALTHY)
    assert [vm for vm, _ in plan.steps] == ["high", "mid", "big", "low"]


def test_placement_respects_free_memory_and_reports_what_does_not_fit():
    lost = [rec("a", 1536), rec("b", 1024), rec("c", 1024), rec("d", 512)]
    plan = plan_restarts(lost, HEALTHY)
    placed = dict(plan.steps)
    used = {h.name: sum(m for vm, m in [("a", 1536), ("b", 1024), ("c", 1024), ("d", 512)]
                        if placed.get(vm) == h.name) for h in HEALTHY}
    assert all(used[h.name] <= h.free_mib for h in HEALTHY)
    assert placed["a"] == "h3"
    assert {vm for vm, _ in plan.unplaced} == {"c"} or {vm for vm, _ in plan.unplaced} == {"b"}
    assert all("MiB" in why for _, why in plan.unplaced)
    # Capacity comes back: the next round places what is left.
    again = plan_restarts([rec(vm, 1024) for vm, _ in plan.unplaced],
                          [HostCapacity("h2", 4096, 4096)])
    assert again.unplaced == () and len(again.steps) == 1


def test_pinned_and_cvm_never_restart_and_stopped_vms_stay_stopped():
    lost = [VmRecord("cvm", "dead", 512, True, {ROLE_LABEL: "cvm"}),
            VmRecord("gpu", "dead", 512, True, {PINNED_LABEL: "true"}),
            VmRecord("nvme", "dead", 512, True, {}, has_pci_hostdev=True),
            rec("off", 128, running=False), rec("web", 128)]
    plan = plan_restarts(lost, HEALTHY)
    assert [vm for vm, _ in plan.steps] == ["web"]
    assert {vm for vm, _ in plan.skipped} == {"cvm", "gpu", "nvme"}


def test_placement_is_injectable():
    calls = []

    class Ads:
        def choose(self, hosts, vm, *, need_free_mib, pending_mib, placed, closed):
            calls.append((vm.name, vm.memory_mib, pending_mib, placed))
            return "h2"

    plan = plan_restarts([rec("a", 128), rec("b", 256)], HEALTHY, strategy=Ads(),
                         running={"web": "h3"})
    assert plan.steps == (("b", "h2"), ("a", "h2"))
    assert calls == [("b", 256, {}, {"web": "h3"}),
                     ("a", 128, {"h2": 256}, {"web": "h3", "b": "h2"})]
    assert plan_restarts([rec("a", 128)], []).unplaced == (("a", "no healthy host"),)


def test_ads_placement_keeps_anti_affinity_and_must_rules_on_restart():
    hosts = [HostCapacity("h2", 8192, 6144), HostCapacity("h3", 8192, 4096),
             HostCapacity("h4", 8192, 2048)]
    rules = Rules(anti_affinity=(AntiAffinityGroup("db", ("db1", "db2", "db3")),),
                  host_affinity=(VmHostAffinity("lic", ("app",), ("h4",), "must"),))
    lost = [rec("db1", 1024), rec("db2", 1024), rec("app", 512), rec("free", 512)]
    plan = plan_restarts(lost, hosts, strategy=lenient(rules),
                         running={"db3": "h2"})
    placed = dict(plan.steps)
    # db3 runs on h2 (the roomiest): the two others go elsewhere, each to its own host.
    assert placed["db1"] != "h2" and placed["db2"] != "h2"
    assert placed["db1"] != placed["db2"]
    assert placed["app"] == "h4"  # its must rule, though h4 has the least free memory
    assert placed["free"] == "h2"  # no rule: most free memory
    # Plain memory placement would have stacked db1 with db3 on h2.
    assert dict(plan_restarts(lost, hosts, running={"db3": "h2"}).steps)["db1"] == "h2"
    # No host the rules allow: reported as unplaced with ADS's reason, not forced.
    full = plan_restarts([rec("db1", 1024)], hosts[:1], strategy=lenient(rules),
                         running={"db3": "h2"})
    assert full.steps == () and "anti-affinity" in full.unplaced[0][1]


def test_unreadable_rules_never_keep_a_vm_down():
    def broken():
        raise InvalidSpec("cluster state ads-rules", "x.json", "JSON")

    plan = plan_restarts([rec("a", 512)], HEALTHY, strategy=AdsRules(broken, lenient=True))
    assert plan.steps == (("a", "h3"),)
