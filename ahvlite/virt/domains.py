"""VM lifecycle on one host through libvirt, one intent per function.

``guest.py`` keeps the lab's small helpers; this module is what the VM layer
(``cluster.vms``) uses: define, power operations, device hot-plug, metadata, removal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import libvirt
from lxml import etree

from ahvlite.errors import AhvliteError, Conflict, OperationTimeout
from ahvlite.virt import guest
from ahvlite.virt.conn import libvirt_errors, or_none
from ahvlite.virt.xml.domain import AHV_NS, Domain, VmMeta

ACTIVE_STATES = ("running", "paused", "blocked", "shutdown", "suspended")


def define_domain(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    with libvirt_errors("define domain"):
        return conn.defineXML(xml)


def all_domains(conn: libvirt.virConnect) -> list[libvirt.virDomain]:
    with libvirt_errors("list domains"):
        return list(conn.listAllDomains(0))


def find_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    return or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                   context=f"look up {name}")


def find_domain_by_uuid(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    return or_none(lambda: conn.lookupByUUIDString(uuid), missing=libvirt.VIR_ERR_NO_DOMAIN,
                   context=f"look up {uuid}")


domain_state = guest.state  # one definition of a domain's state name


def domain_xml(dom: libvirt.virDomain, *, inactive: bool = False) -> str:
    with libvirt_errors(f"XML of {dom.name()}"):
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)


def power_on(dom: libvirt.virDomain) -> None:
    with libvirt_errors(f"start {dom.name()}"):
        if not dom.isActive():
            dom.create()


def power_off(dom: libvirt.virDomain) -> None:
    """Pull the plug (no guest cooperation)."""
    with libvirt_errors(f"power off {dom.name()}"):
        if dom.isActive():
            dom.destroy()


def acpi_shutdown(dom: libvirt.virDomain, *, timeout_s: float,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Ask the guest to shut down (ACPI) and wait; OperationTimeout when it does not."""
    name = dom.name()
    with libvirt_errors(f"shut down {name}"):
        if not dom.isActive():
            return
        # Flags 0: the QEMU driver uses the ACPI power button when the VM has no guest
        # agent channel (ours have none), and drivers without ACPI (test://) still work.
        dom.shutdownFlags(0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with libvirt_errors(f"state of {name}"):
            if not dom.isActive():
                return
        sleep(0.25)
    raise OperationTimeout(f"{name} did not shut down within {timeout_s:.0f} s",
                           hint="the guest may ignore ACPI; use --force to power it off")


def shut_down(dom: libvirt.virDomain, *, timeout_s: float, force: bool) -> None:
    """ACPI shutdown; when the guest ignores it for ``timeout_s``, power off only if
    ``force`` (else the OperationTimeout stands)."""
    try:
        acpi_shutdown(dom, timeout_s=timeout_s)
    except AhvliteError:
        if not force:
            raise
        power_off(dom)


def acpi_reboot(dom: libvirt.virDomain) -> None:
    with libvirt_errors(f"reboot {dom.name()}"):
        if not dom.isActive():
            raise Conflict(f"{dom.name()} is not running", hint="start it instead")
        dom.reboot(0)  # ACPI on QEMU without a guest agent (see acpi_shutdown)


def undefine_everything(dom: libvirt.virDomain) -> None:
    """Remove the definition with its NVRAM file and TPM state (drivers without
    those flags, like the test driver, get what they support)."""
    name = dom.name()
    base = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    for extra in (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM,
                  libvirt.VIR_DOMAIN_UNDEFINE_NVRAM, 0):
        try:
            dom.undefineFlags(base | extra)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG or extra == 0:
                with libvirt_errors(f"undefine {name}"):
                    raise


def _live_flags(dom: libvirt.virDomain) -> int:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    return flags


def attach_device(dom: libvirt.virDomain, device_xml: str) -> None:
    """Add a device to the definition and, when the VM runs, hot-plug it."""
    with libvirt_errors(f"attach a device to {dom.name()}"):
        dom.attachDeviceFlags(device_xml, _live_flags(dom))


def detach_device(dom: libvirt.virDomain, device_xml: str) -> None:
    with libvirt_errors(f"detach a device from {dom.name()}"):
        dom.detachDeviceFlags(device_xml, _live_flags(dom))


def mark_power(dom: libvirt.virDomain, on: bool) -> None:
    """Record in the VM's metadata whether its owner wants it running: a VM powered off
    through ahvlite stays off, one fenced or killed with its host is HA's to restart."""
    d = Domain.parse(domain_xml(dom, inactive=True))
    meta = d.ensure_meta()
    want = "on" if on else "off"
    if meta.power != want:
        meta.power = want
        set_vm_metadata(dom, meta)


def set_vm_metadata(dom: libvirt.virDomain, meta: VmMeta) -> None:
    """Replace ahvlite's ``<metadata>`` element of ``dom``."""
    # libvirt puts the element into our namespace itself and fails ("failed to create
    # a new XML namespace") when the element already declares it: hand it over bare.
    bare = etree.fromstring(etree.tostring(meta.el))
    for el in bare.iter():
        if isinstance(el.tag, str):
            el.tag = etree.QName(el).localname
    etree.cleanup_namespaces(bare)
    xml = etree.tostring(bare, encoding="unicode")
    with libvirt_errors(f"metadata of {dom.name()}"):
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "ahv", AHV_NS,
                        _live_flags(dom))


def memory_mib(conn: libvirt.virConnect) -> tuple[int, int]:
    """(total, free) memory of the host in MiB."""
    with libvirt_errors("host memory"):
        total = int(conn.getInfo()[1])
        free = int(conn.getFreeMemory()) // (1024 * 1024)
    return total, free


def usable_cpu_models(conn: libvirt.virConnect, domain_type: str) -> list[str]:
    """Named CPU models this host can run for ``domain_type`` (empty if it cannot tell)."""
    try:
        xml = conn.getDomainCapabilities(None, "x86_64", None, domain_type, 0)
    except libvirt.libvirtError:
        return []
    root = etree.fromstring(xml.encode())
    return [m.text or "" for m in root.findall("cpu/mode[@name='custom']/model")
            if m.get("usable") == "yes"]


def reserved_memory_mib(conn: libvirt.virConnect) -> int:
    """Memory the running VMs of a host hold (their current balloon size)."""
    with libvirt_errors("memory of running VMs"):
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return sum(int(d.info()[2]) for d in doms) // 1024
