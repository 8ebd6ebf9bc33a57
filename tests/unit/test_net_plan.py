"""Planning host networking: desired vs observed -> typed steps (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ahvlite.errors import InvalidSpec
from ahvlite.net import plan
from ahvlite.spec.errors import build
from ahvlite.spec.network import NetworkSpec

NICS = frozenset({"lo", "eth0", "eth1", "eth2", "eth3"})


def spec(members=("eth0", "eth1"), **bond) -> NetworkSpec:
    return build(NetworkSpec, bridges=[{"name": "br0", "datapath_type": "netdev",
                                        "uplink": {"members": list(members), **bond}}])


def as_observed(s: NetworkSpec, *, nics=NICS, virbr0=None) -> plan.ObservedHost:
    """What a host looks like after ``s`` was applied (the applier's contract)."""
    bridges = []
    for br in s.bridges:
        ports = []
        if br.uplink is not None:
            settings_ = plan.BondSettings.from_spec(br.uplink)
            ports.append(plan.ObservedPort(
                name=br.bond_name, interfaces=tuple(sorted(br.uplink.members)),
                bond_mode=settings_.mode, lacp=settings_.lacp,
                bond_updelay_ms=settings_.updelay_ms, bond_downdelay_ms=settings_.downdelay_ms,
                other_config={**dict(settings_.other_config), "unrelated": "kept"}))
        ports.append(plan.ObservedPort(name=br.name, interfaces=(br.name,)))
        bridges.append(plan.ObservedBridge(br.name, br.datapath_type, tuple(ports)))
    return plan.ObservedHost(bridges=tuple(bridges), nics=nics, virbr0=virbr0)


def kinds(steps):
    return [s.kind for s in steps]


def test_empty_host_gets_bridge_then_bond():
    steps = plan.plan_host(spec(), plan.ObservedHost(nics=NICS))
    assert kinds(steps) == ["AddBridge", "AddBond"]
    assert steps[1].members == ("eth0", "eth1")
    assert steps[1].settings.other_config == (("bond-detect-mode", "carrier"),
                                              ("lacp-fallback-ab", "false"),
                                              ("lacp-time", "slow"))


def test_matching_host_plans_nothing():
    s = spec()
    v = plan.ObservedVirbr0(exists=True, addresses=("192.168.5.1/24",))
    assert plan.plan_host(s, as_observed(s, virbr0=v)) == []


def test_bond_made_by_lab_up_gets_the_missing_settings_once():
    # lab up creates br0-up with only bond-detect-mode; the first apply completes it.
    s = spec()
    observed = plan.ObservedHost(bridges=(plan.ObservedBridge("br0", "netdev", (
        plan.ObservedPort("br0-up", ("eth0", "eth1"), bond_mode="active-backup",
                          other_config={"bond-detect-mode": "carrier"}),)),), nics=NICS)
    (step,) = plan.plan_host(s, observed)
    assert step.kind == "SetBond"
    assert step.changed == ("lacp-fallback-ab: - -> false", "lacp-time: - -> slow")


def test_member_change_adds_new_before_removing_old():
    s = spec(members=("eth0", "eth2"))
    steps = plan.plan_host(s, as_observed(spec()))
    assert [(x.kind, x.phase) for x in steps] == [("AddBondMember", 1),
                                                  ("RemoveBondMember", 2)]
    assert (steps[0].member, steps[1].member) == ("eth2", "eth1")
    first, second = plan.phases(steps)
    assert [x.member for x in first] == ["eth2"] and [x.member for x in second] == ["eth1"]


def test_mode_and_lacp_change_is_one_set_bond_step():
    s = spec(mode="balance-tcp", lacp="active", lacp_fallback_ab=True, lacp_time="fast")
    (step,) = plan.plan_host(s, as_observed(spec()))
    assert step.kind == "SetBond"
    assert "mode: active-backup -> balance-tcp" in step.changed
    assert "lacp: off -> active" in step.changed
    assert "lacp-fallback-ab: false -> true" in step.changed


def test_unknown_member_nic_is_an_error_naming_what_exists():
    with pytest.raises(InvalidSpec) as e:
        plan.plan_host(spec(members=("eth0", "eth9")), as_observed(spec()), host="h1")
    assert (e.value.field, e.value.value) == ("network.bridges[0].uplink.members", "eth9")
    assert "eth2" in e.value.allowed and "h1" in e.value.allowed


def test_member_already_in_another_port_is_an_error():
    observed = plan.ObservedHost(bridges=(plan.ObservedBridge("br1", "system", (
        plan.ObservedPort("br1-up", ("eth1",)),)),), nics=NICS)
    with pytest.raises(InvalidSpec, match="br1-up"):
        plan.plan_host(spec(), observed)


def test_unknown_nics_are_not_checked_when_the_host_list_is_unknown():
    steps = plan.plan_host(spec(members=("ens9",)), plan.ObservedHost(nics=None))
    assert kinds(steps) == ["AddBridge", "AddBond"]


def test_virbr0_created_or_completed_only_when_observed():
    s = spec()
    assert kinds(plan.plan_host(s, as_observed(s, virbr0=plan.ObservedVirbr0(False)))) == [
        "CreateVirbr0"]
    assert kinds(plan.plan_host(s, as_observed(s, virbr0=plan.ObservedVirbr0(True)))) == [
        "AddVirbr0Address"]
    assert plan.plan_host(s, as_observed(s, virbr0=None)) == []


def test_datapath_type_change():
    s = spec()
    observed = as_observed(build(NetworkSpec, bridges=[{
        "name": "br0", "datapath_type": "system",
        "uplink": {"members": ["eth0", "eth1"]}}]))
    (step,) = plan.plan_host(s, observed)
    assert (step.kind, step.was, step.datapath_type) == ("SetBridgeDatapath", "system", "netdev")


def test_steps_serialise_for_json():
    d = plan.plan_host(spec(), plan.ObservedHost(nics=NICS))[1].to_dict()
    assert d["step"] == "AddBond" and d["phase"] == 1 and "eth0 + eth1" in d["describe"]


members = st.lists(st.sampled_from(["eth0", "eth1", "eth2", "eth3"]), min_size=1, max_size=4,
                   unique=True)
bond_kw = st.fixed_dictionaries({
    "mode": st.sampled_from(["active-backup", "balance-slb"]),
    "lacp": st.sampled_from(["off", "active", "passive"]),
    "lacp_fallback_ab": st.booleans(),
    "lacp_time": st.sampled_from(["fast", "slow"]),
    "updelay_ms": st.integers(0, 5000), "downdelay_ms": st.integers(0, 5000)})


@settings(max_examples=300, deadline=None)
@given(members, bond_kw, members, bond_kw)
def test_any_change_converges_and_never_empties_the_bond(old_m, old_kw, new_m, new_kw):
    old, new = spec(old_m, **old_kw), spec(new_m, **new_kw)
    steps = plan.plan_host(new, as_observed(old))
    # Simulate applying the phases in order and check the bond at every point.
    have = set(old_m)
    for step in steps:
        if isinstance(step, plan.AddBondMember):
            have.add(step.member)
        elif isinstance(step, plan.RemoveBondMember):
            # Everything added comes first: a removal never meets a bond lacking new members.
            assert set(new_m) <= have
            have.discard(step.member)
        assert have, "the bond was left without members"
    assert have == set(new_m)
    assert [s.phase for s in steps] == sorted(s.phase for s in steps)
    # Once applied, nothing is left to do.
    assert plan.plan_host(new, as_observed(new)) == []
