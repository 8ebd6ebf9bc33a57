"""The provisioning inventory (pure) and what real ansible makes of it and of host.yml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ahvlite.cluster import provision
from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.spec.cluster import ClusterSpec

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def cluster(**extra) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "name": "c1",
        "hosts": [
            {"name": "h1", "uri": "qemu+tls://10.0.0.11/system",
             "ssh": {"host": "10.0.0.11", "key": "/k/id", "known_hosts": "/k/known_hosts"}},
            {"name": "h2", "uri": "qemu+tls://10.0.0.12/system",
             "ssh": {"host": "h2.example", "user": "ops", "port": 2222}},
        ], **extra})


def inventory(names=(), profile=None, **kw):
    return provision.build_inventory(cluster(), list(names), cluster_file=Path("/c/cluster.yaml"),
                                     pki_dir=Path("/c/pki"),
                                     profile=profile or provision.Profile(), **kw)


def group(inv):
    return inv["all"]["children"][provision.GROUP]


def test_host_vars_come_from_the_ssh_section():
    hosts = group(inventory())["hosts"]
    h1, h2 = hosts["h1"], hosts["h2"]
    assert (h1["ansible_host"], h1["ansible_port"], h1["ansible_user"]) == ("10.0.0.11", 22,
                                                                            "root")
    assert h1["ansible_ssh_private_key_file"] == "/k/id"
    # The cluster's known_hosts decides; nothing is accepted on first sight.
    assert "UserKnownHostsFile=/k/known_hosts" in h1["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in h1["ansible_ssh_common_args"]
    assert "ansible_become" not in h1
    assert (h2["ansible_host"], h2["ansible_port"], h2["ansible_user"]) == ("h2.example", 2222,
                                                                            "ops")
    assert h2["ansible_become"] is True and "ansible_ssh_private_key_file" not in h2
    # libvirtd listens on the URI's address, which need not be the SSH name.
    assert h2["ahvlite_mgmt_ip"] == "10.0.0.12"


def test_real_host_profile_reaches_everything_and_lab_profile_does_not():
    real = group(inventory())["vars"]
    assert real["ahvlite_service_manager"] == "systemd"
    assert real["ahvlite_packages_mode"] == "install"
    assert real["ahvlite_manage_boot"] is True and real["ahvlite_reboot_allowed"] is False
    assert "ansible_remote_tmp" not in real
    lab = group(inventory(profile=provision.lab_profile(
        lockspace_dir=Path("/s/.lock"), zk_members=["h1"], wheel_dir=Path("/s/wheels"),
        watchdog="unix:/run/ahvlite/watchdog.sock")))["vars"]
    assert lab["ahvlite_service_manager"] == "external"
    assert lab["ahvlite_packages_mode"] == "verify"
    assert lab["ahvlite_manage_boot"] is False and lab["ahvlite_reboot_allowed"] is False
    assert lab["ansible_remote_tmp"].startswith("/run/")  # /run is private per lab host
    assert lab["ahvlite_lockspace_dir"] == "/s/.lock"
    assert lab["ahvlite_cluster_file"] == "/c/cluster.yaml"
    assert lab["ahvlite_pki_dir"] == "/c/pki"
    # A lab host shares this machine's kernel: its agent never gets /dev/watchdog, and
    # the play never loads softdog there (the watchdog role needs ahvlite_manage_boot).
    assert lab["controller_watchdog"].startswith("unix:")
    assert "--no-index" in lab["controller_pip_extra_args"]
    play = yaml.safe_load((REPO / "playbooks" / "host.yml").read_text())[0]
    (watchdog,) = [r for r in play["roles"] if r["role"] == "watchdog"]
    assert "ahvlite_manage_boot" in watchdog["when"] and "systemd" in watchdog["when"]


def test_per_host_vars_override_and_limit():
    inv = inventory(["h2"], per_host={"h2": {"libvirt_tls_source_dir": "/x"}})
    assert group(inv)["hosts"]["h2"]["libvirt_tls_source_dir"] == "/x"
    # Every host with SSH stays listed (ZooKeeper's ensemble needs them all) ...
    assert set(group(inv)["hosts"]) == {"h1", "h2"}
    # ... and the run is limited to the ones asked for.
    assert provision.limit(["h2"]) == "h2"
    assert provision.limit([]) is None


def test_host_without_ssh_is_refused_naming_the_field():
    spec = ClusterSpec.model_validate({"name": "c", "hosts": [
        {"name": "h9", "uri": "qemu+tls://10.0.0.9/system"}]})
    with pytest.raises(InvalidSpec) as exc:
        provision.build_inventory(spec, ["h9"], cluster_file=Path("/c"), pki_dir=Path("/p"),
                                  profile=provision.Profile())
    assert exc.value.field == "hosts[h9].ssh"
    assert "ssh section" in exc.value.message


def test_unknown_host_and_empty_cluster():
    with pytest.raises(NotFound, match="'nope'"):
        inventory(["nope"])
    with pytest.raises(InvalidSpec, match="at least one host"):
        provision.build_inventory(ClusterSpec(name="e"), [], cluster_file=Path("/c"),
                                  pki_dir=Path("/p"), profile=provision.Profile())


def test_tags_are_split_and_checked():
    assert provision.check_tags("--tags", ["network,libvirt", "checks"]) == [
        "network", "libvirt", "checks"]
    with pytest.raises(InvalidSpec) as exc:
        provision.check_tags("--skip-tags", ["network,netwrok"])
    assert exc.value.field == "--skip-tags" and exc.value.value == "netwrok"


def test_lab_cluster_is_recognised_by_its_label():
    assert provision.is_lab(cluster(labels={"ahvlite.lab": "tprov"})) == "tprov"
    assert provision.is_lab(cluster()) is None


def _ansible_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "ANSIBLE_HOME": str(tmp_path / "home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "t"),
            "ANSIBLE_ROLES_PATH": str(REPO / "playbooks" / "roles"),
            "ANSIBLE_LIBRARY": str(REPO / "playbooks" / "library"), "ANSIBLE_NOCOLOR": "1"}


def test_real_ansible_reads_the_inventory(tmp_path):
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory()))
    out = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"],
                         capture_output=True, text=True, env=_ansible_env(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert sorted(listed[provision.GROUP]["hosts"]) == ["h1", "h2"]
    h2 = listed["_meta"]["hostvars"]["h2"]
    assert h2["ansible_port"] == 2222 and h2["ahvlite_service_manager"] == "systemd"


def test_host_playbook_passes_ansible_syntax_check_and_lists_every_role(tmp_path):
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory()))
    env = _ansible_env(tmp_path)
    play = str(REPO / "playbooks" / "host.yml")
    out = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(path), "--syntax-check",
                          play], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    tags = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(path), "--list-tags",
                           play], capture_output=True, text=True, env=env, timeout=120)
    assert tags.returncode == 0, tags.stderr
    # Every tag the CLI accepts exists in the play (a typo there would select nothing).
    for tag in provision.TAGS:
        assert tag in tags.stdout, tag


# --- the controllers' ZooKeeper secret (generated once, kept beside the CA) ---

def _cluster_file(tmp_path: Path) -> Path:
    cf = tmp_path / "cluster.yaml"
    shared = {"shared_pool": "shared",
              "pool": {"kind": "netfs", "server": "10.0.0.5", "export": "/srv/ahvlite"}}
    cf.write_text(yaml.safe_dump(cluster(**shared).model_dump(mode="json", exclude_none=True)))
    return cf


def provision_inputs(hosts: list[str], *, cluster: Path, check: bool):
    """The inputs of `host provision -f CLUSTER` (the CA and secret beside the file)."""
    from ahvlite.cli.provision import provision_inputs as inputs
    from ahvlite.spec.cluster import load_cluster

    return inputs(hosts, spec=load_cluster(cluster), cluster_file=cluster, pki_dir=None,
                  check=check)


def test_zk_secret_is_generated_once_kept_0600_and_passed_as_extra_var(tmp_path):
    cf = _cluster_file(tmp_path)
    inv, extra = provision_inputs(["h1"], cluster=cf, check=False)
    secret = extra[provision.ZK_SECRET_VAR]
    assert len(secret) >= provision.ZK_SECRET_MIN_CHARS
    kept = tmp_path / "pki" / provision.ZK_SECRET_FILE
    assert kept.read_text().strip() == secret
    assert kept.stat().st_mode & 0o777 == 0o600
    # Not in the inventory (its vars end up in events and `ansible-inventory` output).
    assert secret not in json.dumps(inv)
    # Stable: a second run (another host, too) gets the same one, so nothing changes.
    _, again = provision_inputs(["h2"], cluster=cf, check=False)
    assert again == extra
    # Loosened permissions are tightened again.
    kept.chmod(0o644)
    provision_inputs([], cluster=cf, check=True)
    assert kept.stat().st_mode & 0o777 == 0o600


def test_check_mode_writes_no_secret_and_a_bad_one_is_refused(tmp_path):
    cf = _cluster_file(tmp_path)
    _, extra = provision_inputs([], cluster=cf, check=True)
    assert len(extra[provision.ZK_SECRET_VAR]) >= provision.ZK_SECRET_MIN_CHARS
    assert not (tmp_path / "pki").exists()
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / provision.ZK_SECRET_FILE).write_text("short\n")
    with pytest.raises(InvalidSpec) as exc:
        provision_inputs([], cluster=cf, check=False)
    assert exc.value.field.endswith("zk-secret") and "16 or more" in exc.value.allowed
    assert "short" not in exc.value.message  # never echoed


def _render(role: str, template: str, inv: dict, host: str, **extra) -> str:
    import jinja2

    d = REPO / "playbooks" / "roles" / role
    defaults = yaml.safe_load((d / "defaults" / "main.yml").read_text())
    group_vars = yaml.safe_load((REPO / "playbooks" / "group_vars" /
                                 f"{provision.GROUP}.yml").read_text())
    hostvars = group(inv)["hosts"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    ctx = {"ansible_managed": "managed", "groups": {provision.GROUP: list(hostvars)},
           "ansible_facts": {"os_family": "Debian"},
           "hostvars": hostvars, "inventory_hostname": host, **group(inv)["vars"],
           **hostvars[host]}
    for name, value in {**group_vars, **defaults}.items():  # role defaults win, as in ansible
        try:
            ctx[name] = env.from_string(value).render(ctx) if isinstance(value, str) else value
        except jinja2.TemplateError:  # ansible's own filters: not needed by the template
            continue
    ctx["zookeeper_members"] = list(hostvars)
    return env.from_string((d / "templates" / template).read_text()).render(**ctx, **extra)


def test_controller_env_names_everything_the_daemons_need_and_no_secret(tmp_path):
    from ahvlite.controller.coord.url import ZkUrl, parse_store_url

    cf = _cluster_file(tmp_path)
    inv, extra = provision_inputs([], cluster=cf, check=False)
    text = _render("controller", "controller.env.j2", inv, "h2", **extra)
    env = dict(line.split("=", 1) for line in text.splitlines()
               if line and not line.startswith("#"))
    assert extra[provision.ZK_SECRET_VAR] not in text
    assert set(env) == {"AHVLITE_STORE", "AHVLITE_STORE_SECRET_FILE", "AHVLITE_STORE_TLS_DIR",
                        "AHVLITE_HOST", "AHVLITE_API_LISTEN", "AHVLITE_API_CERT",
                        "AHVLITE_API_KEY", "AHVLITE_API_CA", "AHVLITE_LIBVIRT_URI",
                        "AHVLITE_WATCHDOG"}
    assert env["AHVLITE_HOST"] == "h2" and env["AHVLITE_API_LISTEN"] == "10.0.0.12:9440"
    assert env["AHVLITE_STORE_SECRET_FILE"] == "/etc/ahvlite/store.secret"
    assert env["AHVLITE_STORE_TLS_DIR"] == "/etc/ahvlite/pki/zk"
    assert env["AHVLITE_WATCHDOG"] == "/dev/watchdog"
    # The URL carries no credential; the controller takes it from the secret file,
    # which the role writes as USER:SECRET (what coord/url.py reads).
    secret_file = tmp_path / "store.secret"
    secret_file.write_text(f"ahvlite:{extra[provision.ZK_SECRET_VAR]}\n")
    secret_file.chmod(0o600)
    assert "@" not in env["AHVLITE_STORE"]
    url = parse_store_url(env["AHVLITE_STORE"],
                          env={"AHVLITE_STORE_SECRET_FILE": str(secret_file)})
    assert isinstance(url, ZkUrl)
    assert (url.user, url.secret) == ("ahvlite", extra[provision.ZK_SECRET_VAR])
    assert url.hosts == (("10.0.0.11", 2281), ("10.0.0.12", 2281))
    assert url.chroot == "/ahvlite"
    tasks = (REPO / "playbooks" / "roles" / "controller" / "tasks" / "main.yml").read_text()
    assert 'content: "{{ controller_zk_user }}:{{ ahvlite_zk_secret }}\\n"' in tasks


def test_zoo_cfg_opens_only_the_tls_port_with_pem_stores(tmp_path):
    inv, _ = provision_inputs([], cluster=_cluster_file(tmp_path), check=False)
    cfg = dict(line.split("=", 1) for line in _render(
        "zookeeper", "zoo.cfg.j2", inv, "h1").splitlines() if line and line[0] != "#")
    assert "clientPort" not in cfg and cfg["secureClientPort"] == "2281"
    assert cfg["secureClientPortAddress"] == "10.0.0.11"
    assert cfg["serverCnxnFactory"] == "org.apache.zookeeper.server.NettyServerCnxnFactory"
    assert cfg["sslQuorum"] == "true" and cfg["ssl.clientAuth"] == "need"
    for prefix in ("ssl", "ssl.quorum"):
        assert cfg[f"{prefix}.keyStore.location"] == "/etc/zookeeper/tls/server.pem"
        assert cfg[f"{prefix}.keyStore.type"] == cfg[f"{prefix}.trustStore.type"] == "PEM"
    assert cfg["server.2"] == "10.0.0.12:2888:3888"


# --- the IOMMU reboot handler refuses while VMs run ---

def _reboot_play(tmp_path: Path, uri: str, allowed: bool) -> subprocess.CompletedProcess[str]:
    """The iommu role's real handlers, notified on this machine (local connection).

    Safe: ansible's reboot action refuses a local connection ("would reboot the control
    node"), so reaching it shows up as that error instead of a reboot.
    """
    src = REPO / "playbooks" / "roles" / "iommu"
    role = tmp_path / "roles" / "iommu"
    for sub in ("defaults/main.yml", "handlers/main.yml", "tasks/reboot_guard.yml"):
        (role / sub).parent.mkdir(parents=True, exist_ok=True)
        (role / sub).write_text((src / sub).read_text())
    (role / "tasks" / "main.yml").write_text(
        "- name: Pretend the kernel arguments changed\n"
        "  ansible.builtin.debug: {msg: changed}\n"
        "  changed_when: true\n"
        "  notify: Reboot needed for the IOMMU\n")
    play = tmp_path / "play.yml"
    play.write_text("- name: Reboot guard\n  hosts: all\n  gather_facts: false\n"
                    "  roles: [iommu]\n")
    env = {**_ansible_env(tmp_path), "ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    extra = json.dumps({"ahvlite_reboot_allowed": allowed, "iommu_libvirt_uri": uri,
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable})
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", extra,
                           str(play)], capture_output=True, text=True, env=env, timeout=180)


def test_reboot_handler_refuses_while_vms_run(tmp_path):
    # libvirt's test driver starts with one running domain, "test".
    out = _reboot_play(tmp_path, "test:///default", allowed=True)
    assert out.returncode != 0
    assert "runs VMs (test)" in out.stdout
    assert "ahvlite host maintenance enter localhost --wait" in out.stdout
    assert "would reboot the control node" not in out.stdout  # the reboot was not reached


def test_reboot_handler_goes_on_to_the_reboot_with_no_vm_running(tmp_path):
    node = tmp_path / "node.xml"
    node.write_text("<node>\n</node>\n")  # a test-driver host without domains
    out = _reboot_play(tmp_path, f"test://{node}", allowed=True)
    assert "runs VMs" not in out.stdout
    assert "would reboot the control node" in out.stdout, out.stdout
    # Not allowed: no guard and no reboot, only the notice.
    quiet = _reboot_play(tmp_path, "test:///default", allowed=False)
    assert quiet.returncode == 0, quiet.stdout
    assert "needs a reboot for the IOMMU" in quiet.stdout and "runs VMs" not in quiet.stdout


def test_ssh_files_from_the_api_are_the_controllers_and_used_here_only_if_present(tmp_path):
    from ahvlite.cli.provision import with_local_ssh

    here = tmp_path / "known_hosts"
    here.write_text("")
    spec = cluster()  # h1 names /k/id and /k/known_hosts: not on this machine
    spec = spec.model_copy(update={"hosts": [
        spec.hosts[0], spec.hosts[1].model_copy(update={"ssh": spec.hosts[1].ssh.model_copy(
            update={"known_hosts": here})})]})
    api = with_local_ssh(spec, key=None, known_hosts=None, from_api=True)
    h1, h2 = (group(provision.build_inventory(api, [], cluster_file=Path("/c/c.yaml"),
                                              pki_dir=Path("/c/pki"),
                                              profile=provision.Profile()))["hosts"][n]
              for n in ("h1", "h2"))
    assert "ansible_ssh_private_key_file" not in h1  # ssh's own defaults here
    assert "UserKnownHostsFile" not in h1["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in h1["ansible_ssh_common_args"]  # still strict
    assert f"UserKnownHostsFile={here}" in h2["ansible_ssh_common_args"]  # present here
    mine = with_local_ssh(spec, key=tmp_path / "k", known_hosts=here, from_api=True)
    assert {(h.ssh.key, h.ssh.known_hosts) for h in mine.hosts} == {(tmp_path / "k", here)}
    from_file = with_local_ssh(spec, key=None, known_hosts=None, from_api=False)
    assert from_file.hosts[0].ssh.key == Path("/k/id")  # a -f file's paths are this machine's
