"""The ansible inventory for provisioning hosts, built from the cluster file (pure).

Nothing here touches a host or a file: the cluster spec and the paths come in as
arguments and an inventory (the dict ansible reads as JSON/YAML) comes out, so what
ansible will be told is tested without running it. ``remote/ansible.py`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ahvlite.errors import InvalidSpec

if TYPE_CHECKING:  # only annotations: `host provision --help` needs no pydantic
    from ahvlite.spec.cluster import ClusterSpec, HostSpec

GROUP = "ahvlite_hosts"
LAB_LABEL = "ahvlite.lab"  # set on the cluster file `ahvlite lab up` writes

# What a tag may look like: ansible splits --tags on commas, so a comma or space in
# one would silently become two tags.
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
TAGS = ("packages", "iommu", "libvirt", "tls", "virtlockd", "network", "virbr0", "services",
        "zookeeper", "watchdog", "controller", "checks", "storage")


@dataclass(frozen=True)
class Profile:
    """How far the playbook may reach on the hosts.

    ``systemd`` hosts are real machines: packages are installed, the bootloader gets the
    IOMMU arguments and daemons are systemd services. ``external`` hosts (the lab) run
    daemons ahvlite started itself and share this machine's root filesystem, so the
    playbook only verifies packages, never touches the bootloader, systemd or anything
    outside the host's private directories, and checks daemons through their sockets.
    """

    service_manager: Literal["systemd", "external"] = "systemd"
    packages: Literal["install", "verify"] = "install"
    manage_boot: bool = True
    reboot_allowed: bool = False
    remote_tmp: str | None = None  # None: ansible's default (~/.ansible/tmp)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_vars(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ahvlite_service_manager": self.service_manager,
            "ahvlite_packages_mode": self.packages,
            "ahvlite_manage_boot": self.manage_boot,
            "ahvlite_reboot_allowed": self.reboot_allowed,
        }
        if self.remote_tmp:
            out["ansible_remote_tmp"] = self.remote_tmp
        return {**out, **self.extra}


def lab_profile(*, lockspace_dir: Path, zk_members: list[str], wheel_dir: Path,
                watchdog: str) -> Profile:
    """A lab host: a set of namespaces on this machine (see docs/architecture.md)."""
    # /run is bind-mounted per lab host; ansible's default ~/.ansible/tmp would be this
    # machine's /root. A lab host reaches no package index (its network is the lab's):
    # ahvlite and its dependencies are installed from wheels built here, in a directory
    # it sees. Its agent feeds the lab's watchdog process, never this machine's.
    return Profile(service_manager="external", packages="verify", manage_boot=False,
                   reboot_allowed=False, remote_tmp="/run/ahvlite-ansible",
                   extra={"ahvlite_lockspace_dir": str(lockspace_dir),
                          "zookeeper_members": zk_members,
                          "controller_wheel_dir": str(wheel_dir),
                          "controller_wheel_deps": True,
                          "controller_pip_extra_args": "--no-cache-dir --no-index "
                                                       f"--find-links={wheel_dir}",
                          "controller_watchdog": watchdog})


def is_lab(cluster: ClusterSpec) -> str | None:
    """The lab name if ``cluster`` is a lab's cluster file."""
    return cluster.labels.get(LAB_LABEL)


def management_ip(host: HostSpec) -> str:
    """The address libvirtd listens on: the libvirt URI's host, else the SSH host."""
    parsed = urlsplit(host.uri)
    if parsed.hostname:
        return parsed.hostname
    if host.ssh is not None:
        return host.ssh.host
    raise InvalidSpec(f"hosts[{host.name}].uri", host.uri,
                      "a remote URI naming the host's management address "
                      "(qemu+tls://ADDR/system)")


def host_vars(host: HostSpec) -> dict[str, Any]:
    """How ansible reaches ``host`` (the cluster file's ssh section) and its address."""
    if host.ssh is None:
        raise InvalidSpec(f"hosts[{host.name}].ssh", None,
                          "an ssh section (host, user, key, known_hosts) so ansible can "
                          "reach the host", hint="`ahvlite host add NAME --ssh USER@ADDR "
                          "--key KEY --known-hosts FILE` records it")
    s = host.ssh
    # The cluster's known_hosts is the authority, as for paramiko (remote/ssh.py):
    # an unknown or changed host key fails the run instead of being accepted.
    ssh_args = ["-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"]
    if s.known_hosts is not None:
        ssh_args += ["-o", f"UserKnownHostsFile={s.known_hosts}"]
    out: dict[str, Any] = {
        "ansible_host": s.host,
        "ansible_port": s.port,
        "ansible_user": s.user,
        "ansible_ssh_common_args": " ".join(ssh_args),
        "ahvlite_mgmt_ip": management_ip(host),
    }
    if s.key is not None:
        out["ansible_ssh_private_key_file"] = str(s.key)
    if s.user != "root":
        out["ansible_become"] = True
    return out


def build_inventory(cluster: ClusterSpec, names: list[str], *, cluster_file: Path,
                    pki_dir: Path, profile: Profile,
                    per_host: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The inventory for provisioning ``names`` (all hosts when empty).

    Every host of the cluster is listed in the group (ZooKeeper's ensemble is built
    from all of them); the run is limited to ``names`` by :func:`limit`.
    """
    for n in names:
        cluster.host(n)  # unknown host -> NotFound naming it
    if not cluster.hosts:
        raise InvalidSpec("hosts", [], "at least one host in the cluster file",
                          hint="`ahvlite host add` one first")
    selected = set(names) or {h.name for h in cluster.hosts}
    hosts: dict[str, Any] = {}
    for h in cluster.hosts:
        if h.name in selected or h.ssh is not None:
            hosts[h.name] = {**host_vars(h), **(per_host or {}).get(h.name, {})}
    group_vars = {
        "ahvlite_cluster_name": cluster.name,
        "ahvlite_cluster_file": str(cluster_file),
        "ahvlite_pki_dir": str(pki_dir),
        # Debian 12 and EL9 both have it; discovery can pick a user's pyenv shim instead.
        "ansible_python_interpreter": "/usr/bin/python3",
        **profile.to_vars(),
    }
    return {"all": {"children": {GROUP: {"hosts": hosts, "vars": group_vars}}}}


# The controllers' ZooKeeper digest credential: the controller role writes it as
# USER:SECRET into /etc/ahvlite/store.secret (0600), the file $AHVLITE_STORE_SECRET_FILE
# names (coord/url.py), never into a URL or onto a command line. Only characters that
# need no quoting anywhere; the CLI keeps one per cluster beside the CA.
ZK_SECRET_VAR = "ahvlite_zk_secret"
ZK_SECRET_FILE = "zk-secret"
ZK_SECRET_MIN_CHARS = 16
_ZK_SECRET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-")


def check_zk_secret(source: str, secret: str) -> str:
    """``secret`` (read from ``source``) if usable; InvalidSpec without echoing it."""
    if len(secret) < ZK_SECRET_MIN_CHARS or not set(secret) <= _ZK_SECRET_CHARS:
        raise InvalidSpec(source, "***", f"{ZK_SECRET_MIN_CHARS} or more of letters, digits "
                          "and . _ ~ -", hint="remove the file to have a new one generated "
                          "(then provision every host again)")
    return secret


def run_vars(zk_secret: str) -> dict[str, Any]:
    """Extra variables of a provisioning run (kept out of the inventory's group vars)."""
    return {ZK_SECRET_VAR: check_zk_secret(ZK_SECRET_VAR, zk_secret)}


def limit(names: list[str]) -> str | None:
    return ",".join(names) if names else None


def check_tags(option: str, tags: list[str]) -> list[str]:
    """Tags split on commas, each one of ours; InvalidSpec naming the bad one."""
    out: list[str] = []
    for raw in tags:
        for t in (p.strip() for p in raw.split(",")):
            if not t:
                continue
            if t not in TAGS or not set(t) <= _TAG_CHARS:
                raise InvalidSpec(option, t, f"one of {', '.join(TAGS)}")
            out.append(t)
    return out
