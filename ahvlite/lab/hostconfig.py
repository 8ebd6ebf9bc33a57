"""Configuration files of one lab host's daemons (pure: text in, text out)."""

from __future__ import annotations

from pathlib import Path

from ahvlite.lab.layout import HostLayout, LabLayout


def libvirtd_conf(host: HostLayout, allowed_dns: list[str]) -> str:
    # TLS only, on the management address; clients are verified by certificate (no
    # unauthenticated TCP), and only the cluster's hosts and admins are let in, not
    # whoever holds some certificate of the CA. The unix socket needs no auth: only
    # root reaches it.
    dns = ", ".join(f'"{dn}"' for dn in allowed_dns)  # pki.libvirt_dn: no quotes in them
    return f"""\
listen_tls = 1
listen_tcp = 0
listen_addr = "{host.ip}"
auth_tls = "none"
tls_no_verify_certificate = 0
tls_no_sanity_certificate = 0
tls_allowed_dn_list = [{dns}]
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "{host.host_uuid}"
keepalive_interval = 5
keepalive_count = 5
max_workers = 8
min_workers = 1
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def qemu_conf(host: HostLayout) -> str:
    # root:root so QEMU can open /dev/kvm in the sandbox; no cgroup controllers and no
    # per-VM mount namespace, because the host itself already lives in a namespace.
    return f"""\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
lock_manager = "lockd"
migration_host = "{host.ip}"
migration_address = "{host.ip}"
vnc_listen = "127.0.0.1"
spice_listen = "127.0.0.1"
stdio_handler = "logd"
"""


def qemu_lockd_conf(lockspace: Path) -> str:
    # Every disk gets a lease in the shared lockspace, so two hosts can never open the
    # same disk: the lab's stand-in for the guarantee HA depends on.
    return f"""\
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "{lockspace}"
"""


def sshd_config(host: HostLayout, lab: LabLayout) -> str:
    return f"""\
ListenAddress {host.ip}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile {lab.ssh_dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
AcceptEnv LANG LC_*
"""


def hosts_file(lab: LabLayout) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{h.ip} {h.hostname} {h.name}" for h in lab.hosts]
    return "\n".join(lines) + "\n"
