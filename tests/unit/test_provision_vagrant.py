"""vagrant/Vagrantfile, as far as this machine allows without Vagrant: Ruby accepts it,
evaluated under a recording stand-in for Vagrant's config object it defines 3 q35 hosts
with a vIOMMU, an NVMe controller and two uplink NICs each, provisions them with the
playbook that exists, and the inventory and cluster file it writes parse (ansible,
ahvlite)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ahvlite.cluster.legacy import open_cluster_file as load_cluster

REPO = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"
VENV_BIN = Path(sys.executable).parent

# Records every call made on Vagrant's config object (and what blocks do with the
# objects they are given), then prints the calls as JSON.
RECORDER = r"""
require "json"
$calls = []
class Rec
  def initialize(path) = @path = path
  def method_missing(name, *args, **kw, &blk)
    path = @path + [name.to_s.delete_suffix("=")]
    $calls << {"call" => path.join("."), "args" => args.map(&:to_s),
               "kw" => kw.transform_keys(&:to_s).transform_values(&:to_s)}
    child = Rec.new(path)
    blk.call(child, Rec.new(path + ["override"])) if blk
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.configure(_version) = yield(Rec.new([]))
end
load ARGV[0]
puts JSON.dump($calls)
"""


def ruby() -> str:
    path = shutil.which("ruby")
    if path is None:
        pytest.fail("ruby is missing: `make setup` installs it (Debian package ruby)")
    return path


def test_ruby_accepts_the_vagrantfile():
    out = subprocess.run([ruby(), "-c", str(VAGRANTFILE)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "Syntax OK" in out.stdout, out.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    state = tmp_path_factory.mktemp("vagrant-state")
    rec = state / "recorder.rb"
    rec.write_text(RECORDER)
    out = subprocess.run([ruby(), str(rec), str(VAGRANTFILE)], capture_output=True, text=True,
                         timeout=60, cwd=VAGRANTFILE.parent,
                         env={**os.environ, "AHVLITE_VAGRANT_STATE": str(state)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), state


def test_three_nested_q35_hosts_with_viommu_nvme_and_two_uplinks(evaluated):
    calls, _ = evaluated
    defined = [c["args"][0] for c in calls if c["call"] == "vm.define"]
    assert defined == ["h1", "h2", "h3"]
    by = lambda name: [c for c in calls if c["call"] == name]  # noqa: E731
    assert [c["args"] for c in by("vm.define.vm.provider.machine_type")] == [["q35"]] * 3
    assert [c["args"] for c in by("vm.define.vm.provider.nested")] == [["true"]] * 3
    qemu = [c["kw"]["value"] for c in by("vm.define.vm.provider.qemuargs")]
    assert qemu.count("intel-iommu,intremap=on,caching-mode=on") == 3
    assert qemu.count("kernel_irqchip=split") == 3
    nvme = [v for v in qemu if v.startswith("nvme,")]
    assert sorted(nvme) == [f"nvme,serial=ahvlite-h{i}-nvme,drive=ahvnvme0" for i in (1, 2, 3)]
    nets = by("vm.define.vm.network")
    uplinks = [n for n in nets if n["kw"].get("libvirt__network_name") == "ahvlite-uplink"]
    assert len(uplinks) == 6 and all(n["kw"]["auto_config"] == "false" for n in uplinks)
    mgmt = [n["kw"]["ip"] for n in nets if "ip" in n["kw"]]
    assert mgmt == ["10.77.1.11", "10.77.1.12", "10.77.1.13"]


def test_provisioned_by_the_playbook_that_exists(evaluated):
    calls, state = evaluated
    kinds = [(c["args"][0], c["kw"].get("type")) for c in calls
             if c["call"] == "vm.define.vm.provision"]
    assert kinds.count(("ahvlite", "ansible")) == 1
    playbooks = [c["args"][0] for c in calls if c["call"] == "vm.define.vm.provision.playbook"]
    # The first box's NFS export, then one run of host.yml, from the last host, for all.
    assert [Path(p) for p in playbooks] == [REPO / "playbooks" / "nfs_server.yml",
                                            REPO / "playbooks" / "host.yml"]
    assert all(Path(p).exists() for p in playbooks)
    inv = [c["args"][0] for c in calls if c["call"] == "vm.define.vm.provision.inventory_path"]
    assert inv == [str(state / "inventory.yml")] * 2
    cmd = [c["args"][0] for c in calls if c["call"] == "vm.define.vm.provision.playbook_command"]
    assert cmd[0].endswith("/bin/ansible-playbook")


def test_written_inventory_parses_with_ansible_and_sets_the_real_host_profile(evaluated):
    _, state = evaluated
    raw = yaml.safe_load((state / "inventory.yml").read_text())
    group = raw["all"]["children"]["ahvlite_hosts"]
    assert group["vars"]["ahvlite_service_manager"] == "systemd"
    assert group["vars"]["ahvlite_manage_boot"] is True
    env = {**os.environ, "ANSIBLE_HOME": str(state / "ah"), "ANSIBLE_LOCAL_TEMP": str(state / "t")}
    out = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(state / "inventory.yml"),
                          "--list"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert sorted(listed["ahvlite_hosts"]["hosts"]) == ["h1", "h2", "h3"]
    assert listed["_meta"]["hostvars"]["h2"]["ahvlite_mgmt_ip"] == "10.77.1.12"
    # The playbook accepts it (syntax and variables the play asserts on are present).
    for book in ("host.yml", "nfs_server.yml"):
        syntax = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i",
                                 str(state / "inventory.yml"), "--syntax-check",
                                 str(REPO / "playbooks" / book)],
                                capture_output=True, text=True, timeout=120,
                                env={**env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"})
        assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_written_cluster_file_is_a_valid_ahvlite_cluster(evaluated):
    _, state = evaluated
    spec = load_cluster(state / "cluster.yaml")
    assert [h.name for h in spec.hosts] == ["h1", "h2", "h3"]
    assert all(h.ssh is not None and h.ssh.user == "root" and h.ovsdb is not None
               for h in spec.hosts)
    (br0,) = spec.network.bridges
    assert br0.uplink is not None and len(br0.uplink.members) == 2
    # Shared storage: h1's NFS export as the netfs pool (host provision needs one).
    assert spec.shared_pool == "ahvlite-shared" and spec.pool is not None
    assert (spec.pool.kind, spec.pool.server, spec.pool.export) == ("netfs", "10.77.1.11",
                                                                    "/srv/ahvlite")
    from ahvlite.cluster import sharedpool

    group, _ = sharedpool.provision_vars(spec)
    inv = yaml.safe_load((state / "inventory.yml").read_text())["all"]["children"]
    assert {k: v for k, v in inv["ahvlite_hosts"]["vars"].items() if k in group} == group
    assert list(inv["ahvlite_nfs_server"]["hosts"]) == ["h1"]
    assert inv["ahvlite_nfs_server"]["vars"]["nfs_server_clients"] == "10.77.1.0/24"
