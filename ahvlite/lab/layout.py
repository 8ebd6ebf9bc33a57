"""The lab's layout as plain data: names, addresses and paths (pure, no I/O).

Everything the lab creates is named from the lab name, so ``lab up`` can find and
clear the leftovers of an earlier run even when its state file was lost.
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ahvlite.errors import InvalidSpec
from ahvlite.spec.lab import LabSpec

# 192.168.5.0/24 is AHV's internal host <-> CVM network; it exists on every host and is
# never routed anywhere.
VIRBR0_ADDRESS = "192.168.5.1/24"
OVS_BRIDGE = "br0"
BOND = "br0-up"
UPLINKS = ("eth0", "eth1")
SHARED_POOL = "lab-shared"
UUID_NAMESPACE = uuid.UUID("6f1d2c1e-8a36-4f4e-9d0b-5d3c3b7a1a10")


@dataclass(frozen=True)
class HostLayout:
    index: int  # 1-based
    name: str  # h1, h2 ... (the name in the cluster file and for ``lab exec``)
    hostname: str  # UTS hostname, unique across labs
    netns: str
    address: ipaddress.IPv4Interface  # management address on br0
    veths: tuple[str, str]  # root-namespace ends of the two uplinks
    host_uuid: str  # libvirt host_uuid: libvirt refuses to migrate to "the same host"
    state_dir: Path

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def libvirt_tls_uri(self) -> str:
        return f"qemu+tls://{self.ip}/system"

    @property
    def run_dir(self) -> Path:
        """Bind-mounted over the host's /run, so its sockets are reachable from here."""
        return self.state_dir / "run"

    @property
    def libvirt_sock(self) -> Path:
        return self.run_dir / "libvirt" / "libvirt-sock"

    @property
    def ovsdb_sock(self) -> Path:
        return self.run_dir / "openvswitch" / "db.sock"

    @property
    def etc_ahvlite(self) -> Path:
        """The host's private /etc/ahvlite, seen from the root namespace: store.secret
        and pki/ (install_ahvlite_pki), as the playbook lays them out."""
        return self.state_dir / "etc" / "ahvlite"

    @property
    def mnt_ns_file(self) -> Path:
        return self.state_dir.parent.parent / "ns" / f"{self.name}.mnt"

    @property
    def uts_ns_file(self) -> Path:
        return self.state_dir.parent.parent / "ns" / f"{self.name}.uts"


@dataclass(frozen=True)
class LabLayout:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Interface
    bridge: str
    root: Path
    hosts: tuple[HostLayout, ...]
    guest_addresses: tuple[ipaddress.IPv4Interface, ...]

    @property
    def ns_dir(self) -> Path:
        return self.root / "ns"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.yaml"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def admin_pki_dir(self) -> Path:
        """The lab admin's API credentials: ca.pem, admin.pem, admin-key.pem."""
        return self.pki_dir / "admin"

    @property
    def client_pki_dir(self) -> Path:
        """What ``pkipath=`` in a libvirt URI points at: cacert, clientcert, clientkey."""
        return self.pki_dir / "client"

    @property
    def store_tls_dir(self) -> Path:
        """The root namespace's store client TLS files ($AHVLITE_STORE_TLS_DIR)."""
        return self.pki_dir / "zk"

    @property
    def store_secret_file(self) -> Path:
        """The store's USER:SECRET for clients in the root namespace (0600)."""
        return self.pki_dir / "store.secret"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def shared_dir(self) -> Path:
        """Shared storage seen by every host, like an NFS export."""
        return self.root / "shared"

    @property
    def lockspace_dir(self) -> Path:
        return self.shared_dir / ".lockspace"

    def host(self, name: str) -> HostLayout:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise InvalidSpec("host", name, f"lab {self.name!r} has hosts {known}")

    def libvirt_uri(self, host: HostLayout) -> str:
        return f"{host.libvirt_tls_uri}?pkipath={self.client_pki_dir}"


def bridge_name(lab: str) -> str:
    return f"ahvl-{lab}"


def netns_prefix(lab: str) -> str:
    return f"ahvl-{lab}-"


def veth_prefix(lab: str) -> str:
    # The dash ends the lab name: without it, lab "tnet" would match "tnetx"'s veths
    # in the name-based sweep and take them down with it.
    return f"v{lab}-"


def segment_prefix(lab: str) -> str:
    # Like the veths', the dash ends the lab name for the name-based sweep; "s" keeps a
    # segment apart from every lab's veths ("v") and main bridge ("ahvl-").
    return f"s{lab}-"


def segment_name(lab: str, number: int) -> str:
    """A partition's top-of-rack segment bridge: ``s<lab>-<number>`` (number >= 1)."""
    return f"{segment_prefix(lab)}{number}"


def next_segment(lab: str, taken: Iterable[str]) -> str:
    """The lowest-numbered segment name of ``lab`` not in ``taken``.

    Reusing the lowest free number keeps names short: a lab never has more non-empty
    segments than hosts, so the name stays far inside the kernel's 15 bytes.
    """
    used = set(taken)
    return next(segment_name(lab, n) for n in itertools.count(1)
                if segment_name(lab, n) not in used)


def plan_layout(spec: LabSpec, root: Path) -> LabLayout:
    """Assign addresses and names; raise InvalidSpec when the subnet is too small.

    The gateway takes the first usable address, hosts the next ones, and guests are
    numbered down from the top of the subnet so both can grow without meeting.
    """
    subnet = spec.effective_subnet
    usable = list(subnet.hosts())
    guests = spec.hosts * spec.guests_per_host
    needed = 1 + spec.hosts + guests
    if len(usable) < needed:
        smallest = 32 - (needed + 1).bit_length()
        raise InvalidSpec(
            "subnet", str(subnet),
            f"a {spec.hosts}-host lab needs {needed} addresses (gateway, {spec.hosts} "
            f"hosts, {guests} guests) and this subnet has {len(usable)}; "
            f"use a /{smallest} or larger")
    prefix = subnet.prefixlen
    gateway = ipaddress.IPv4Interface(f"{usable[0]}/{prefix}")
    hosts = []
    for i in range(1, spec.hosts + 1):
        name = f"h{i}"
        hosts.append(HostLayout(
            index=i,
            name=name,
            hostname=f"{spec.name}-{name}",
            netns=f"{netns_prefix(spec.name)}{name}",
            address=ipaddress.IPv4Interface(f"{usable[i]}/{prefix}"),
            veths=(f"{veth_prefix(spec.name)}{i}a", f"{veth_prefix(spec.name)}{i}b"),
            host_uuid=str(uuid.uuid5(UUID_NAMESPACE, f"{spec.name}/{name}")),
            state_dir=root / "hosts" / name,
        ))
    guest_addresses = tuple(
        ipaddress.IPv4Interface(f"{usable[-1 - k]}/{prefix}") for k in range(guests))
    return LabLayout(
        name=spec.name, subnet=subnet, gateway=gateway, bridge=bridge_name(spec.name),
        root=root, hosts=tuple(hosts), guest_addresses=guest_addresses)
