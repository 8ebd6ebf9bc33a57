"""Guest lifecycle and console through libvirt.

``simple_domain_xml`` builds the small guests the lab boots (the VM layer's designer
takes over policy for user VMs); the rest is lifecycle and a console that runs a
command in a guest over libvirt's console stream, which works across hosts.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from ahvlite.errors import OperationFailed, OperationTimeout
from ahvlite.virt.conn import libvirt_errors, or_none

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


@dataclass(frozen=True)
class SimpleGuest:
    name: str
    uuid: str
    domain_type: str  # kvm or qemu (TCG)
    memory_mib: int = 128
    vcpus: int = 1
    disk: Path | None = None  # qcow2, on virtio-scsi; boots with SeaBIOS
    kernel: Path | None = None  # direct kernel boot when set
    initrd: Path | None = None
    cmdline: str = ""
    bridge: str | None = None  # OVS bridge for the one NIC
    mac: str | None = None
    fw_cfg: dict[str, str] = field(default_factory=dict)  # opt/... entries for the guest
    serial_log: Path | None = None
    machine: str = "q35"


def simple_domain_xml(g: SimpleGuest) -> str:
    E = etree.SubElement
    dom = etree.Element("domain", type=g.domain_type)
    E(dom, "name").text = g.name
    E(dom, "uuid").text = g.uuid
    E(dom, "memory", unit="MiB").text = str(g.memory_mib)
    E(dom, "vcpu").text = str(g.vcpus)
    if g.fw_cfg:
        sysinfo = E(dom, "sysinfo", type="fwcfg")
        for key, value in sorted(g.fw_cfg.items()):
            E(sysinfo, "entry", name=key).text = value
    os_el = E(dom, "os")
    E(os_el, "type", arch="x86_64", machine=g.machine).text = "hvm"
    if g.kernel:
        E(os_el, "kernel").text = str(g.kernel)
        if g.initrd:
            E(os_el, "initrd").text = str(g.initrd)
        E(os_el, "cmdline").text = g.cmdline
    else:
        E(os_el, "boot", dev="hd")
    # Without <acpi/> libvirt starts QEMU with ACPI off: no fw_cfg device for the
    # guest to find, and no PCI interrupt routing on q35.
    features = E(dom, "features")
    E(features, "acpi")
    E(features, "apic")
    E(dom, "on_poweroff").text = "destroy"
    E(dom, "on_reboot").text = "restart"
    E(dom, "on_crash").text = "destroy"
    devices = E(dom, "devices")
    E(devices, "controller", type="scsi", model="virtio-scsi", index="0")
    if g.disk:
        disk = E(devices, "disk", type="file", device="disk")
        E(disk, "driver", name="qemu", type="qcow2", cache="none")
        E(disk, "source", file=str(g.disk))
        E(disk, "target", dev="sda", bus="scsi")
    if g.bridge:
        nic = E(devices, "interface", type="bridge")
        if g.mac:
            E(nic, "mac", address=g.mac)
        E(nic, "source", bridge=g.bridge)
        E(nic, "virtualport", type="openvswitch")
        E(nic, "model", type="virtio")
    serial = E(devices, "serial", type="pty")
    if g.serial_log:
        E(serial, "log", file=str(g.serial_log), append="off")
    E(serial, "target", port="0")
    console = E(devices, "console", type="pty")
    E(console, "target", type="serial", port="0")
    E(devices, "memballoon", model="none")
    return etree.tostring(dom, encoding="unicode", pretty_print=True)


def define(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    with libvirt_errors("define domain"):
        return conn.defineXML(xml)


def start(dom: libvirt.virDomain) -> None:
    with libvirt_errors(f"start {dom.name()}"):
        dom.create()


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    with libvirt_errors(f"domain {name}"):
        return conn.lookupByName(name)


def state(dom: libvirt.virDomain) -> str:
    with libvirt_errors(f"state of {dom.name()}"):
        return STATE_NAMES.get(dom.state()[0], "unknown")


def destroy_and_undefine(conn: libvirt.virConnect, name: str) -> bool:
    """Power off and undefine ``name`` if it exists; True when something was removed."""
    dom = or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                  context=f"look up {name}")
    if dom is None:
        return False
    with libvirt_errors(f"remove {name}"):
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    return True


def list_domains(conn: libvirt.virConnect) -> list[tuple[str, str]]:
    with libvirt_errors("list domains"):
        return sorted((d.name(), STATE_NAMES.get(d.state()[0], "unknown"))
                      for d in conn.listAllDomains(0))


class Console:
    """A serial console over libvirt's stream API: send lines, read until a pattern."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.dom = dom
        self.stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        with libvirt_errors(f"open console of {dom.name()}"):
            dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.buffer = ""

    def close(self) -> None:
        try:
            self.stream.finish()
        except libvirt.libvirtError:
            self.stream.abort()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            with libvirt_errors(f"write console of {self.dom.name()}"):
                sent = self.stream.send(data)
            if sent == -2:
                time.sleep(0.01)
                continue
            data = data[sent:]

    def _poll(self) -> bool:
        with libvirt_errors(f"read console of {self.dom.name()}"):
            chunk = self.stream.recv(4096)
        if chunk == -2 or chunk is None:
            return False
        if isinstance(chunk, bytes):
            if not chunk:
                raise OperationFailed(f"console of {self.dom.name()} closed")
            self.buffer += chunk.decode(errors="replace")
            return True
        return False

    def expect(self, pattern: str, *, timeout_s: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            if time.monotonic() > deadline:
                tail = self.buffer[-500:]
                raise OperationTimeout(
                    f"{self.dom.name()}: no {pattern!r} on the console in {timeout_s:.0f} s;"
                    f" last output: {tail!r}")
            if not self._poll():
                time.sleep(0.05)

    def run(self, command: str, *, timeout_s: float = 30) -> tuple[int, str]:
        """Run a shell command in the guest; return its exit status and output."""
        tag = secrets.token_hex(4)
        # The markers are printed by the guest's shell; the echoed command line holds
        # the literal ``$?``, so only the real end marker carries a number.
        self.send(f"\recho B{tag}; {command}; echo E{tag} $?\r")
        self.expect(rf"(?m)^B{tag}\r?$", timeout_s=timeout_s)
        end = self.expect(rf"(?s)(.*?)E{tag} (\d+)", timeout_s=timeout_s)
        return int(end.group(2)), end.group(1).strip()
