"""`host provision` and shared storage: refused without it; the playbook's variables."""

from __future__ import annotations

import json

import pytest
import yaml

from ahvlite.cluster import sharedpool
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from tests.clirun import ahvlite

HOSTS = [{"name": "h1", "uri": "qemu+tls://10.0.0.11/system", "ssh": {"host": "10.0.0.11"}},
         {"name": "h2", "uri": "qemu+tls://10.0.0.12/system", "ssh": {"host": "10.0.0.12"}}]
NFS = {"kind": "netfs", "server": "10.0.0.5", "export": "/srv/ahvlite"}


def test_without_shared_storage_nothing_is_provisioned():
    for spec in (ClusterSpec(name="c", hosts=HOSTS),
                 ClusterSpec(name="c", hosts=HOSTS, shared_pool="p"),
                 ClusterSpec(name="c", hosts=HOSTS, pool=NFS)):
        with pytest.raises(InvalidSpec, match="shared storage every host mounts"):
            sharedpool.provision_vars(spec)


def test_nfs_pool_and_lockspace_on_it():
    group, per_host = sharedpool.provision_vars(
        ClusterSpec(name="c", hosts=HOSTS, shared_pool="shared", pool=NFS))
    assert group == {"ahvlite_pool_name": "shared", "ahvlite_pool_kind": "netfs",
                     "ahvlite_pool_path": "/var/lib/ahvlite/shared",
                     "ahvlite_pool_server": "10.0.0.5", "ahvlite_pool_export": "/srv/ahvlite",
                     "ahvlite_lockspace_dir": "/var/lib/ahvlite/shared/.lockspace",
                     "ahvlite_storage": "dir"}
    assert per_host == {}


def test_iscsi_hosts_get_their_redirector_config():
    _, per_host = sharedpool.provision_vars(ClusterSpec(
        name="c", hosts=HOSTS, shared_pool="shared", pool=NFS, storage="iscsi",
        iscsi={"portals": {"h2": "10.1.0.12:3262"}, "failback_checks": 5}))
    cfg = per_host["h1"]["ahvlite_redirector_config"]
    assert cfg["host"] == "h1" and cfg["pool_dir"] == "/var/lib/ahvlite/shared"
    assert cfg["targets"] == {"h1": "10.0.0.11:3260", "h2": "10.1.0.12:3262"}
    assert cfg["failback_checks"] == 5 and cfg["listen"] == "127.0.0.1:3261"
    assert per_host["h2"]["ahvlite_redirector_config"]["host"] == "h2"


def test_cli_refuses_with_a_clear_message(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "hosts": HOSTS, "shared_pool": "p"}))
    out = ahvlite("host", "provision", "-f", str(path), "--json", timeout_s=120)
    assert out.returncode == 2, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["error"] == "invalid" and "pool=None" in err["message"]
    assert "netfs" in err["message"] and "Traceback" not in out.stderr
    assert not (tmp_path / "pki").exists()  # nothing written (no ZooKeeper secret)
