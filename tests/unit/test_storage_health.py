"""Target health, where a login goes, failback, tgtadm output and the storage view."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.storage import PoolSpec, split_portal
from ahvlite.storage import health, names, tgt, view
from ahvlite.storage.health import Session, TargetHealth, Thresholds, choose, record

DATA = Path(__file__).parent.parent / "data" / "tgt"
HOSTS = ("h1", "h2", "h3", "h4")

# A history of checks per host: True = pass, False = fail.
histories = st.fixed_dictionaries({h: st.lists(st.booleans(), max_size=12) for h in HOSTS})


def replay(hist: dict[str, list[bool]]) -> dict[str, TargetHealth]:
    out = {}
    for h, checks in hist.items():
        t = TargetHealth(h, f"10.0.0.{h[1:]}:3260")
        for i, ok in enumerate(checks):
            t = record(t, ok=ok, at_s=float(i), rtt_ms=float(len(h) + i) if ok else None)
        out[h] = t
    return out


@given(histories, st.sampled_from(HOSTS))
def test_never_a_target_that_failed_its_last_check(hist, local):
    targets = replay(hist)
    chosen = choose(targets, local, rise=3)
    if chosen is None:
        assert not any(c and c[-1] for c in hist.values())
    else:
        assert hist[chosen] and hist[chosen][-1] is True
        # The local target whenever its last check passed.
        if hist[local] and hist[local][-1]:
            assert chosen == local


def test_streaks_and_state():
    t = TargetHealth("h1", "a:1")
    assert t.state == "unknown"
    t = record(t, ok=True, at_s=1)
    t = record(t, ok=True, at_s=2)
    assert (t.ok_streak, t.fail_streak, t.state, t.changed_s) == (2, 0, "healthy", 1)
    t = record(t, ok=False, at_s=3, error="lost")
    assert (t.ok_streak, t.fail_streak, t.state, t.last_error) == (0, 1, "failed", "lost")


def test_remote_choice_prefers_the_proven_then_the_quick():
    t = replay({"h1": [False], "h2": [True], "h3": [True, True, True], "h4": [True] * 9})
    # h3 and h4 are both past rise: the quicker (lower rtt) wins; h2 is not yet proven.
    assert health.ranked(t, "h1", rise=3) == ["h3", "h4", "h2"]


def s(target: str, address: str, sid: int = 1, initiator: str = "iqn.vm") -> Session:
    return Session(tid=1, target=target, sid=sid, cid=0, initiator=initiator,
                   address=address)


DISK = names.volume_target("vm-a-disk0-x.raw")
HOST_OF = {"10.0.0.1": "h1", "10.0.0.2": "h2", "10.0.0.3": "h3"}


def test_failback_ends_remote_sessions_once_home_passed_rise_checks():
    th = Thresholds(rise=3)
    sessions = [s(DISK, "10.0.0.1"), s(DISK, "10.0.0.2", 2), s(names.HEALTH_TARGET, "10.0.0.1", 3),
                s("iqn.other:t", "10.0.0.1", 4), s(DISK, "10.9.9.9", 5)]
    not_yet = replay({"h1": [False, True, True], "h2": [True] * 5})
    assert health.failback("h2", sessions, not_yet, HOST_OF, {}, 0, th).end == []
    home = replay({"h1": [False, True, True, True], "h2": [True] * 5})
    plan = health.failback("h2", sessions, home, HOST_OF, {}, 0, th)
    # Only h1's VM disk session: never our own host's, the health checks, foreign
    # targets or unknown addresses.
    assert plan.end == [("h1", sessions[0])]


def test_failback_is_held_off_with_a_doubling_delay():
    th = Thresholds(rise=1, hold_off_s=10, hold_off_max_s=40)
    home = replay({"h1": [True], "h2": [True]})
    sess = [s(DISK, "10.0.0.1")]
    holds: dict[str, health.HoldOff] = {}
    ended_at = []
    for now in range(0, 200):
        plan = health.failback("h2", sess, home, HOST_OF, holds, float(now), th)
        if plan.end:
            ended_at.append(now)
        holds = health.after_ending(holds, plan.end, float(now), th)
    assert ended_at[:5] == [0, 10, 30, 70, 110]  # 10, 20, 40, then capped at 40


def test_parse_recorded_tgtadm_show():
    targets = tgt.parse_show((DATA / "show-target.txt").read_text())
    assert [t.tid for t in targets] == [1, 2, 3, 4]
    first = targets[0]
    assert first.iqn == "iqn.2024-01.io.ahvlite:vol:vm-v1-disk0-c24c371a.raw"
    assert first.backing == "/var/lib/ahvlite/labs/dstor/shared/vm-v1-disk0-c24c371a.raw"
    assert first.luns[0] == "" and first.acl == ["10.213.238.2", "10.213.238.3",
                                                  "10.213.238.4"]
    assert first.sessions == [Session(1, first.iqn, 4, 0, "iqn.2008-11.org.linux-kvm:"
                                      "581b391a-44a0-42dd-ab9f-a30f78843ced", "10.213.238.2")]
    hc = targets[3]
    assert hc.iqn == names.HEALTH_TARGET and hc.backing is None
    assert sorted(x.address for x in hc.sessions) == ["10.213.238.2", "10.213.238.3",
                                                       "10.213.238.4"]


def test_plan_exports_adds_missing_and_removes_only_ours():
    targets = tgt.parse_show((DATA / "show-target.txt").read_text())
    keep = {t.iqn: t.backing or "" for t in targets[:2]}
    new = names.volume_target("vm-b-disk0-y.raw")
    plan = tgt.plan_exports(targets, {**keep, new: "/p/vm-b-disk0-y.raw"})
    assert plan.add == [(new, "/p/vm-b-disk0-y.raw")]
    assert plan.remove == [targets[2].iqn]  # not the health target


class FakeTgtd:
    """tgtadm's command line answered from a little model (our own stand-in of the
    injected runner, to check the commands the intent-named operations send)."""

    def __init__(self) -> None:
        self.targets: dict[int, tgt.Target] = {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        a = argv[3:]
        op, mode = a[a.index("--op") + 1], a[a.index("--mode") + 1]
        if op == "show":
            out = []
            for t in self.targets.values():
                out.append(f"Target {t.tid}: {t.iqn}\n    LUN information:")
                for lun, path in t.luns.items():
                    out.append(f"        LUN: {lun}\n            Backing store path: "
                               f"{path or 'None'}")
                out.append("    ACL information:")
                out += [f"        {x}" for x in t.acl]
            return "\n".join(out) + "\n"
        tid = int(a[a.index("--tid") + 1])
        if (op, mode) == ("new", "target"):
            self.targets[tid] = tgt.Target(tid, a[a.index("-T") + 1], {0: ""})
        elif (op, mode) == ("new", "logicalunit"):
            self.targets[tid].luns[int(a[a.index("--lun") + 1])] = a[a.index("-b") + 1]
        elif (op, mode) == ("update", "target"):
            self.params = {**getattr(self, "params", {}),
                           a[a.index("--name") + 1]: a[a.index("--value") + 1]}
        elif op == "bind":
            self.targets[tid].acl.append(a[a.index("-I") + 1])
        elif op == "unbind":
            self.targets[tid].acl.remove(a[a.index("-I") + 1])
        elif (op, mode) == ("delete", "target"):
            del self.targets[tid]
        return ""


def test_export_is_idempotent_and_refuses_another_file():
    fake = FakeTgtd()
    t = tgt.Tgt(fake)
    assert t.export(DISK, "/p/a.raw", ["10.0.0.2", "10.0.0.1"]) is True
    made = fake.targets[1]
    assert (made.iqn, made.luns[1], made.acl) == (DISK, "/p/a.raw", ["10.0.0.1", "10.0.0.2"])
    assert any("--bsoflags" in c and "direct" in c for c in fake.calls)
    assert fake.params["MaxRecvDataSegmentLength"] == "262144"  # not tgt's 8 KiB
    assert t.export(DISK, "/p/a.raw", ["10.0.0.1", "10.0.0.2"]) is False
    with pytest.raises(Exception, match=r"serves /p/a\.raw"):
        t.export(DISK, "/p/other.raw", ["10.0.0.1"])
    assert t.export(DISK, "/p/a.raw", ["10.0.0.1"]) is True  # narrowed ACL
    assert fake.targets[1].acl == ["10.0.0.1"]
    assert t.unexport(DISK) is True and t.unexport(DISK) is False


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}", fullmatch=True))
def test_volume_targets_are_valid_iqns(volume):
    iqn = names.volume_target(volume)
    assert len(iqn.encode()) <= names.MAX_NAME
    assert re.fullmatch(r"iqn\.2024-01\.io\.ahvlite:vol:[a-z0-9.:-]+", iqn)
    assert names.is_volume_target(iqn)


def test_volume_targets_do_not_collide():
    vols = ["vm-a-d-1.raw", "vm-A-d-1.raw", "vm-a_d-1.raw", "vm-a+d-1.raw", "vm-a-d-1.raw" * 18,
            "vm-a-d-1.raw" * 17 + "x"]
    assert len({names.volume_target(v) for v in vols}) == len(vols)


def test_names():
    assert names.vm_uuid_of("iqn.2008-11.org.linux-kvm:581B391A-44a0-42dd-ab9f-a30f78843ced") \
        == "581b391a-44a0-42dd-ab9f-a30f78843ced"
    assert names.vm_uuid_of("iqn.2008-11.org.linux-kvm:web") is None
    assert names.is_lun_volume("vm-web-disk0-ab12.raw")
    assert not names.is_lun_volume("vm-web-disk0-ab12.qcow2")
    assert not names.is_lun_volume("image-guest")
    assert split_portal("10.0.0.1") == ("10.0.0.1", 3260)
    assert split_portal("[fd00::1]:3261") == ("fd00::1", 3261)
    for bad in ("", ":3260", "10.0.0.1:0", "10.0.0.1:x", "[fd00::1", "[fd00::1]x"):
        with pytest.raises(ValueError):
            split_portal(bad)


def test_view_marks_remote_and_stale():
    st_h1 = {"written_at": 100.0, "thresholds": {"interval_s": 1},
             "targets": [{"host": "h1", "state": "failed"}],
             "local_target": {"sessions": []}}
    st_h3 = {"written_at": 99.5, "thresholds": {"interval_s": 1}, "targets": [],
             "local_target": {"sessions": [
                 {"target": DISK, "initiator": "iqn.2008-11.org.linux-kvm:u1",
                  "address": "10.0.0.1", "host": "h1", "vm_uuid": "u1"}]}}
    v = view.merge({"h1": st_h1, "h2": "ssh: refused", "h3": st_h3}, now_s=100.0,
                   vms={"u1": "web"}, disks={"vm-a-disk0-x.raw": ("web", "disk0")})
    assert v["sessions"] == [{"vm": "web", "vm_uuid": "u1", "disk": "disk0", "target": DISK,
                              "initiator": "iqn.2008-11.org.linux-kvm:u1",
                              "address": "10.0.0.1", "vm_host": "h1", "on": "h3",
                              "home": False}]
    assert [h.get("error") for h in v["hosts"]] == [None, "ssh: refused", None]
    old = view.merge({"h1": st_h1}, now_s=200.0)
    assert old["hosts"][0]["stale"] and "old" in old["hosts"][0]["error"]


def test_cluster_storage_fields():
    spec = ClusterSpec(name="c", shared_pool="p", storage="iscsi")
    assert spec.storage == "iscsi"
    with pytest.raises(InvalidSpec, match="storage='san'"):
        ClusterSpec(name="c", storage="san")
    with pytest.raises(InvalidSpec, match="shared_pool"):
        ClusterSpec(name="c", storage="iscsi")
    with pytest.raises(InvalidSpec, match=r"iscsi\.portals"):
        ClusterSpec(name="c", shared_pool="p", iscsi={"portals": {"nope": "10.0.0.1"}})
    with pytest.raises(InvalidSpec, match=r"iscsi\.portals\.h1"):
        ClusterSpec(name="c", shared_pool="p", iscsi={"portals": {"h1": "example.com"}})


def test_pool_spec():
    p = PoolSpec(kind="netfs", server="192.0.2.10", export="/srv/a")
    assert p.lockspace_dir == "/var/lib/ahvlite/shared/.lockspace"
    with pytest.raises(InvalidSpec, match="server"):
        PoolSpec(kind="netfs", export="/srv/a")
    with pytest.raises(InvalidSpec, match=r"pool\.export"):
        PoolSpec(kind="netfs", server="nfs", export="srv")
    with pytest.raises(InvalidSpec, match=r"pool\.server"):
        PoolSpec(kind="netfs", server="a b;c", export="/srv")
    with pytest.raises(InvalidSpec, match=r"pool\.kind"):
        PoolSpec(kind="zfs")
    with pytest.raises(InvalidSpec, match=r"pool\.path"):
        PoolSpec(kind="dir", path="/a/../etc")


def test_a_new_failover_is_not_held_off_like_a_bounce():
    """The same disk fails over and back five times (its home target dies and returns
    each time): every failback is immediate. Guards a hold-off that once grew with each
    real failover until failback took minutes."""
    th = Thresholds(rise=1, hold_off_s=10, hold_off_max_s=300)
    sess = [s(DISK, "10.0.0.1")]
    h1 = TargetHealth("h1", "10.0.0.1:3260")
    h2 = record(TargetHealth("h2", "10.0.0.2:3260"), ok=True, at_s=0)
    holds: dict[str, health.HoldOff] = {}
    now = 0.0
    for _ in range(5):
        h1 = record(h1, ok=False, at_s=now)  # home target dies, the disk fails over
        now += 2
        h1 = record(h1, ok=True, at_s=now)  # back
        plan = health.failback("h2", sess, {"h1": h1, "h2": h2}, HOST_OF, holds, now, th)
        assert plan.end == [("h1", sess[0])], now
        holds = health.after_ending(holds, plan.end, now, th, {"h1": h1, "h2": h2})
        now += 3
