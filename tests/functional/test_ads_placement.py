"""`vm create` without --host places by ADS (its rules) on libvirt's test driver."""

from __future__ import annotations

import pytest

from ahvlite.cluster import vms
from ahvlite.cluster.adsrules import add_rule
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.errors import Conflict
from ahvlite.sched.model import AntiAffinityGroup, VmHostAffinity
from ahvlite.spec.vm import VmSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import connection

pytestmark = pytest.mark.functional


@pytest.fixture
def cluster(tmp_path):
    # Two cluster hosts on the one test driver: what differs is only their names, so
    # only ADS's rules can decide between them.
    path = tmp_path / "cluster.yaml"
    path.write_text("name: adsp\nshared_pool: default-pool\nhosts:\n"
                    "  - name: h1\n    uri: test:///default\n"
                    "  - name: h2\n    uri: test:///default\n")
    with connection("test:///default"):  # the test driver keeps state while one is open
        yield path, load_cluster(path)


def test_must_affinity_decides_the_host_and_a_dead_end_creates_nothing(cluster):
    _path, spec = cluster
    add_rule(spec, VmHostAffinity("on-h2", ("ads-pl",), ("h2",)))
    info = vms.create_vm(spec, VmSpec(name="ads-pl", memory_mib=64))
    try:
        assert info.host == "h2"
    finally:
        vms.delete_vm(spec, "ads-pl")
    # "test" (the driver's own VM) counts on h1 (listed first); apart from it and
    # only on h1 leaves no host, and the error says why for each.
    add_rule(spec, AntiAffinityGroup("apart", ("ads-pl2", "test")))
    add_rule(spec, VmHostAffinity("on-h1", ("ads-pl2",), ("h1",)))
    try:
        with pytest.raises(Conflict) as e:
            vms.create_vm(spec, VmSpec(name="ads-pl2", memory_mib=64))
        assert "h1: anti-affinity: test runs there" in e.value.message
        assert "h2: outside the VM's must-affinity hosts" in e.value.message
        with connection("test:///default") as conn:
            assert guest.find(conn, "ads-pl2") is None
    finally:
        with connection("test:///default") as conn:
            if guest.find(conn, "ads-pl2") is not None:
                vms.delete_vm(spec, "ads-pl2", force=True)


def test_a_rule_naming_a_removed_host_does_not_break_vm_create(cluster, caplog):
    path, spec = cluster
    add_rule(spec, VmHostAffinity("on-h2", ("ads-st",), ("h2",)))
    # `host remove h2` afterwards: the rule stays in cluster state, naming a gone host.
    path.write_text("name: adsp\nshared_pool: default-pool\nhosts:\n"
                    "  - name: h1\n    uri: test:///default\n")
    spec = load_cluster(path)
    info = vms.create_vm(spec, VmSpec(name="ads-st", memory_mib=64))
    try:
        assert info.host == "h1"
        assert any("ADS rule on-h2" in r.getMessage() and "h2" in r.getMessage()
                   for r in caplog.records)
    finally:
        vms.delete_vm(spec, "ads-st")
