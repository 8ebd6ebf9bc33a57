"""Network spec validation: one clear InvalidSpec naming field, value and what is allowed."""

from __future__ import annotations

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import BondSpec, NetworkSpec


def net(**kw):
    return build(NetworkSpec, **kw)


def test_defaults_are_ahv_layout():
    spec = NetworkSpec()
    (br0,) = spec.bridges
    assert (br0.name, br0.bond_name) == ("br0", "br0-up")
    assert br0.uplink is not None and br0.uplink.mode == "active-backup"
    assert br0.uplink.lacp == "off"
    assert str(spec.virbr0.address) == "192.168.5.1/24"
    assert spec.warnings() == []


@pytest.mark.parametrize(("vlan", "ok"), [(0, False), (1, True), (4094, True), (4095, False)])
def test_vlan_ids_1_to_4094(vlan, ok):
    kw = {"networks": [{"name": "n", "vlan": vlan}]}
    if ok:
        assert net(**kw).networks[0].vlan == vlan
    else:
        with pytest.raises(InvalidSpec) as e:
            net(**kw)
        assert e.value.field == "networks.0.vlan" and e.value.value == vlan
        assert "4094" in e.value.allowed or "1" in e.value.allowed


def test_balance_tcp_needs_lacp():
    with pytest.raises(InvalidSpec) as e:
        build(BondSpec, members=["eth0"], mode="balance-tcp")
    assert e.value.field == "lacp" and e.value.value == "off"
    assert "balance-tcp needs LACP" in str(e.value)
    assert build(BondSpec, members=["eth0"], mode="balance-tcp", lacp="active").lacp == "active"


def test_lacp_without_fallback_is_accepted_with_a_warning():
    spec = net(bridges=[{"name": "br0", "uplink": {"members": ["eth0", "eth1"],
                                                   "lacp": "active"}}])
    (w,) = spec.warnings()
    assert "lacp_fallback_ab" in w and "br0-up" in w
    spec = net(bridges=[{"name": "br0", "uplink": {"members": ["eth0"], "lacp": "active",
                                                   "lacp_fallback_ab": True}}])
    assert spec.warnings() == []


def test_unknown_bond_mode_names_the_choices():
    with pytest.raises(InvalidSpec) as e:
        net(bridges=[{"name": "br0", "uplink": {"members": ["eth0"], "mode": "802.3ad"}}])
    assert e.value.field == "bridges.0.uplink.mode"
    assert "balance-slb" in e.value.allowed


def test_duplicate_network_names_and_vlan_ids_are_errors():
    with pytest.raises(InvalidSpec) as e:
        net(networks=[{"name": "a", "vlan": 10}, {"name": "a", "vlan": 20}])
    assert (e.value.field, e.value.value) == ("network.networks[1].name", "a")
    with pytest.raises(InvalidSpec) as e:
        net(networks=[{"name": "a", "vlan": 10}, {"name": "b", "vlan": 10}])
    assert (e.value.field, e.value.value) == ("network.networks[1].vlan", 10)
    assert "'a' has VLAN 10" in e.value.allowed


def test_same_vlan_on_two_bridges_is_fine_but_unknown_bridge_is_not():
    bridges = [{"name": "br0", "uplink": {"members": ["eth0"]}},
               {"name": "br1", "uplink": {"members": ["eth1"]}}]
    spec = net(bridges=bridges, networks=[{"name": "a", "vlan": 10},
                                          {"name": "b", "vlan": 10, "bridge": "br1"}])
    assert len(spec.networks) == 2
    with pytest.raises(InvalidSpec) as e:
        net(networks=[{"name": "a", "vlan": 10, "bridge": "br7"}])
    assert (e.value.field, e.value.value) == ("network.networks[0].bridge", "br7")


def test_a_nic_in_two_bonds_or_twice_in_one_is_an_error():
    with pytest.raises(InvalidSpec) as e:
        net(bridges=[{"name": "br0", "uplink": {"members": ["eth0"]}},
                     {"name": "br1", "uplink": {"members": ["eth0"]}}])
    assert (e.value.field, e.value.value) == ("network.bridges[1].uplink.members", "eth0")
    with pytest.raises(InvalidSpec, match="repeated: eth0"):
        net(bridges=[{"name": "br0", "uplink": {"members": ["eth0", "eth0"]}}])


def test_cluster_file_carries_network_and_host_override():
    cluster = build(ClusterSpec, name="c", network={"networks": [{"name": "a", "vlan": 5}]},
                    hosts=[{"name": "h1", "uri": "qemu:///system",
                            "network": {"bridges": [{"name": "br0",
                                                     "uplink": {"members": ["ens1"]}}]}},
                           {"name": "h2", "uri": "qemu:///system"}])
    h1, h2 = cluster.hosts
    assert cluster.network.for_host(h1.network).bridges[0].uplink.members == ["ens1"]
    assert cluster.network.for_host(h2.network).bridges[0].uplink.members == ["eth0", "eth1"]
    again = build(ClusterSpec, **__import__("yaml").safe_load(cluster.dump_yaml()))
    assert again == cluster


def test_ssl_ovsdb_remote_needs_pki():
    with pytest.raises(InvalidSpec, match=r"ovsdb\.ca_cert"):
        build(ClusterSpec, name="c", hosts=[{"name": "h1", "uri": "qemu:///system",
                                             "ovsdb": {"remote": "ssl:10.0.0.1:6640"}}])
