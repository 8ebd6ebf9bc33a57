"""The shared pool on "real" hosts: an NFS server (nfs-ganesha) in a lab namespace,
and `ahvlite host provision` with a netfs pool against it.

The playbook defines the libvirt netfs pool, libvirt mounts the export and virtlockd's
lockspace goes onto it. Mounting needs the kernel's NFS client: where the kernel has
none (some CI sandboxes), the run must fail exactly there, on the mount, and the rest
is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ahvlite.lab import lab, nfs
from ahvlite.lab.services import inside
from ahvlite.spec.lab import LabSpec
from tests.clirun import ahvlite
from tests.lab.conftest import in_host

NAME = "tnfs"
SUBNET = "10.213.237.0/26"


def kernel_has_nfs() -> bool:
    subprocess.run(["modprobe", "nfs"], capture_output=True, check=False)
    text = Path("/proc/filesystems").read_text()
    return any(line.split()[-1] in ("nfs", "nfs4") for line in text.splitlines() if line)


@pytest.fixture(scope="module")
def nfslab():
    status = lab.up(LabSpec(name=NAME, hosts=1, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    try:
        source, export = nfs.start_server(NAME, "h1")
        yield status, layout, export, source
    finally:
        pids = list(lab.state_of(NAME).processes)
        lab.down(NAME)
        from tests.lab.conftest import assert_gone

        assert_gone(NAME, pids)


def test_the_nfs_server_serves_the_lab_over_nfsv4(nfslab):
    _, layout, export, source = nfslab
    h1 = layout.host("h1")
    addr, path = source.split(":", 1)
    (export / "from-disk.txt").write_text("written on the server's disk\n")
    cat = in_host(h1, "nfs-cat", f"nfs://{addr}{path}/from-disk.txt?version=4")
    assert cat.returncode == 0 and cat.stdout == "written on the server's disk\n", cat.stderr
    local = Path("/var/lib/ahvlite/to-nfs.txt")  # a file of h1's own
    inside(h1, local).write_text("written over NFS\n")
    cp = in_host(h1, "nfs-cp", str(local), f"nfs://{addr}{path}/over-nfs.txt?version=4")
    assert cp.returncode == 0, cp.stderr
    assert (export / "over-nfs.txt").read_text() == "written over NFS\n"


def provision(cluster_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`host provision h1 -f FILE`: a cluster file no controller has (yet)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")}
    return ahvlite("host", "provision", "h1", "-f", str(cluster_file), "--json", *args,
                   env={**env, "COLUMNS": "200"}, timeout_s=600)


def test_provision_with_a_netfs_pool_mounts_it_and_puts_the_lockspace_there(nfslab):
    status, layout, export, source = nfslab
    h1 = layout.host("h1")
    addr, path = source.split(":", 1)
    spec = yaml.safe_load(Path(status["cluster_file"]).read_text())
    mount_point = Path("/var/lib/ahvlite/nfs-pool")  # inside h1 (its own /var/lib/ahvlite)
    spec["shared_pool"] = "nfs-shared"
    spec["pool"] = {"kind": "netfs", "server": addr, "export": path, "path": str(mount_point)}
    cluster_file = layout.root / "cluster-nfs.yaml"
    cluster_file.write_text(yaml.safe_dump(spec))
    run = provision(cluster_file, "--tags", "storage,virtlockd")
    if not kernel_has_nfs():
        # The play got as far as the mount, with the right source.
        assert run.returncode != 0
        text = run.stdout + run.stderr
        assert "Start the pool" in text, text[-3000:]
        assert f"-t nfs {source} {mount_point}" in text, text[-3000:]
        defined = in_host(h1, "virsh", "pool-dumpxml", "nfs-shared")
        assert f"<host name='{addr}'/>" in defined.stdout
        assert f"<dir path='{path}'/>" in defined.stdout
        in_host(h1, "virsh", "pool-undefine", "nfs-shared")
        pytest.skip("this kernel has no NFS client (no nfs in /proc/filesystems): the "
                    "netfs pool is defined but cannot be mounted here")
    result = json.loads(run.stdout)
    assert run.returncode == 0 and result["status"] == "successful", run.stdout + run.stderr
    info = in_host(h1, "virsh", "pool-info", "nfs-shared")
    assert "running" in info.stdout and "yes" in info.stdout.split("Autostart:")[1]
    mounted = in_host(h1, "findmnt", "-n", "-o", "SOURCE", "-M", str(mount_point))
    assert mounted.stdout.strip() == source
    # The lockspace is on the NFS export: the server's disk has it.
    assert (export / ".lockspace").is_dir()
    conf = in_host(h1, "cat", "/etc/libvirt/qemu-lockd.conf").stdout
    assert f'file_lockspace_dir = "{mount_point}/.lockspace"' in conf
    again = json.loads(provision(cluster_file, "--tags", "storage").stdout)
    assert again["changed"] == 0, again["changes"]
