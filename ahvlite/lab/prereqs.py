"""What the machine must have before a lab can start, with the fix for each gap."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ahvlite.errors import MissingDependency

# program -> Debian package that ships it
PROGRAMS = {
    "libvirtd": "libvirt-daemon-system",
    "virtlockd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "ovsdb-server": "openvswitch-switch",
    "ovs-vswitchd": "openvswitch-switch",
    "ovsdb-tool": "openvswitch-common",
    "ovs-vsctl": "openvswitch-switch",
    "sshd": "openssh-server",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "ethtool": "ethtool",
    "dnsmasq": "dnsmasq-base",  # the netagent's DHCP responders (managed networks)
    "mkfs.fat": "dosfstools",
    "syslinux": "syslinux",
    "mcopy": "mtools",
    "cpio": "cpio",
    "dpkg-deb": "dpkg",
}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    return None


def check_lab_prerequisites() -> None:
    if os.geteuid() != 0:
        raise MissingDependency("the lab needs root (namespaces, bridges, daemons)",
                                hint="run it as root, e.g. `sudo -E ahvlite lab up`")
    missing = sorted({pkg for prog, pkg in PROGRAMS.items() if find_program(prog) is None})
    if missing:
        raise MissingDependency(
            f"missing Debian packages: {', '.join(missing)}",
            hint=f"run `make setup`, or `apt-get install -y {' '.join(missing)}`")
    if not Path("/dev/net/tun").exists():
        raise MissingDependency("/dev/net/tun is missing (OVS's userspace datapath needs it)",
                                hint="load the tun module: `modprobe tun`")
    if not Path("/usr/share/openvswitch/vswitch.ovsschema").exists():
        raise MissingDependency("the OVS schema is missing",
                                hint="apt-get install -y openvswitch-common")
