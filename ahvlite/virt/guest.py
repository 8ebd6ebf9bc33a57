"""One libvirt domain as a small object (nova's ``Guest``): its power operations,
definition and devices. The one place that starts, shuts down, powers off, reboots,
defines or undefines a domain; callers read its definition as a typed
:class:`~ahvlite.virt.xml.domain.Domain`, never as XML text.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import libvirt
from lxml import etree

from ahvlite.errors import AhvliteError, Conflict, OperationTimeout
from ahvlite.virt.conn import libvirt_errors, or_none
from ahvlite.virt.xml.base import XmlObject
from ahvlite.virt.xml.domain import AHV_NS, Domain, VmMeta

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
ACTIVE_STATES = ("running", "paused", "blocked", "shutdown", "suspended")

# NVRAM and TPM state live with the definition but belong to the VM, which may run on
# another host now: a stale definition goes without them.
_KEEP_SHARED = libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_TPM


class Guest:
    """One domain of one libvirt connection."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def __repr__(self) -> str:
        return f"Guest({self.name!r})"

    @property
    def name(self) -> str:
        return str(self.dom.name())

    @property
    def uuid(self) -> str:
        with libvirt_errors(f"UUID of {self.name}"):
            return str(self.dom.UUIDString())

    # -- reading ----------------------------------------------------------------------

    def state(self) -> str:
        """running, shutoff, paused... (see STATE_NAMES)."""
        with libvirt_errors(f"state of {self.name}"):
            return STATE_NAMES.get(self.dom.state()[0], "unknown")

    def is_active(self) -> bool:
        with libvirt_errors(f"state of {self.name}"):
            return bool(self.dom.isActive())

    def xml(self, *, inactive: bool = False) -> str:
        """The definition as libvirt has it (for virt/ code that hands it on to libvirt)."""
        with libvirt_errors(f"XML of {self.name}"):
            return str(self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0))

    def config(self, *, inactive: bool = False) -> Domain:
        """The live definition (or the persistent one with ``inactive``), typed."""
        return Domain.parse(self.xml(inactive=inactive))

    # -- power ------------------------------------------------------------------------

    def start(self) -> None:
        """Power on (nothing when it already runs)."""
        with libvirt_errors(f"start {self.name}"):
            if not self.dom.isActive():
                self.dom.create()

    def destroy(self) -> bool:
        """Pull the plug (no guest cooperation); True when it was running."""
        with libvirt_errors(f"power off {self.name}"):
            if not self.dom.isActive():
                return False
            self.dom.destroy()
        return True

    def shutdown(self, *, timeout_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """Ask the guest to shut down (ACPI) and wait; OperationTimeout when it does not."""
        name = self.name
        with libvirt_errors(f"shut down {name}"):
            if not self.dom.isActive():
                return
            # Flags 0: the QEMU driver uses the ACPI power button when the VM has no guest
            # agent channel (ours have none), and drivers without ACPI (test://) still work.
            self.dom.shutdownFlags(0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with libvirt_errors(f"state of {name}"):
                if not self.dom.isActive():
                    return
            sleep(0.25)
        raise OperationTimeout(f"{name} did not shut down within {timeout_s:.0f} s",
                               hint="the guest may ignore ACPI; use --force to power it off")

    def shut_down(self, *, timeout_s: float, force: bool) -> None:
        """ACPI shutdown; when the guest ignores it for ``timeout_s``, power off only if
        ``force`` (else the OperationTimeout stands)."""
        try:
            self.shutdown(timeout_s=timeout_s)
        except AhvliteError:
            if not force:
                raise
            self.destroy()

    def reboot(self) -> None:
        with libvirt_errors(f"reboot {self.name}"):
            if not self.dom.isActive():
                raise Conflict(f"{self.name} is not running", hint="start it instead")
            self.dom.reboot(0)  # ACPI on QEMU without a guest agent (see shutdown)

    def set_autostart(self, on: bool = True) -> None:
        """Start the domain with libvirtd (host boot), as AHV does with its CVM."""
        with libvirt_errors(f"autostart of {self.name}"):
            self.dom.setAutostart(1 if on else 0)

    def autostart(self) -> bool:
        with libvirt_errors(f"autostart of {self.name}"):
            return bool(self.dom.autostart())

    # -- definition -------------------------------------------------------------------

    def undefine(self) -> None:
        """Remove the definition with its NVRAM file and TPM state (drivers without
        those flags, like the test driver, get what they support)."""
        base = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        for extra in (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM,
                      libvirt.VIR_DOMAIN_UNDEFINE_NVRAM, 0):
            try:
                self.dom.undefineFlags(base | extra)
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG or extra == 0:
                    with libvirt_errors(f"undefine {self.name}"):
                        raise

    def undefine_keeping_state(self, context: str) -> None:
        """Remove the definition but keep NVRAM and TPM state (they are the VM's, which
        runs elsewhere). Drivers without the KEEP flags (test://) get a plain undefine,
        which libvirt refuses for a domain with NVRAM: never loses the state either way."""
        try:
            self.dom.undefineFlags(_KEEP_SHARED)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                with libvirt_errors(context):
                    raise
        with libvirt_errors(context):
            self.dom.undefine()

    def _live_flags(self) -> int:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self.dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        return flags

    def attach_device(self, device: XmlObject) -> None:
        """Add a device to the definition and, when the VM runs, hot-plug it."""
        with libvirt_errors(f"attach a device to {self.name}"):
            self.dom.attachDeviceFlags(device.to_xml(), self._live_flags())

    def detach_device(self, device: XmlObject) -> None:
        with libvirt_errors(f"detach a device from {self.name}"):
            self.dom.detachDeviceFlags(device.to_xml(), self._live_flags())

    def mark_power(self, on: bool) -> None:
        """Record in the VM's metadata whether its owner wants it running: a VM powered
        off through ahvlite stays off, one fenced or killed with its host is HA's to
        restart."""
        meta = self.config(inactive=True).ensure_meta()
        want = "on" if on else "off"
        if meta.power != want:
            meta.power = want
            self.set_metadata(meta)

    def set_metadata(self, meta: VmMeta) -> None:
        """Replace ahvlite's ``<metadata>`` element."""
        # libvirt puts the element into our namespace itself and fails ("failed to
        # create a new XML namespace") when the element already declares it: hand it
        # over bare.
        bare = etree.fromstring(etree.tostring(meta.el))
        for el in bare.iter():
            if isinstance(el.tag, str):
                el.tag = etree.QName(el).localname
        etree.cleanup_namespaces(bare)
        xml = etree.tostring(bare, encoding="unicode")
        with libvirt_errors(f"metadata of {self.name}"):
            self.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "ahv", AHV_NS,
                                 self._live_flags())


# -- finding and defining guests on a connection ---------------------------------------

def define(conn: libvirt.virConnect, config: Domain | str) -> Guest:
    """Define (or update, same name and UUID) a domain from its typed definition."""
    xml = config if isinstance(config, str) else config.to_xml()
    with libvirt_errors("define domain"):
        return Guest(conn.defineXML(xml))


def lookup(conn: libvirt.virConnect, name: str) -> Guest:
    """The domain ``name``; NotFound when there is none."""
    with libvirt_errors(f"domain {name}"):
        return Guest(conn.lookupByName(name))


def find(conn: libvirt.virConnect, name: str) -> Guest | None:
    dom = or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                  context=f"look up {name}")
    return None if dom is None else Guest(dom)


def find_by_uuid(conn: libvirt.virConnect, uuid: str) -> Guest | None:
    dom = or_none(lambda: conn.lookupByUUIDString(uuid), missing=libvirt.VIR_ERR_NO_DOMAIN,
                  context=f"look up {uuid}")
    return None if dom is None else Guest(dom)


def all_guests(conn: libvirt.virConnect, flags: int = 0) -> list[Guest]:
    """Every domain of the connection (``flags``: libvirt's listAllDomains filter)."""
    with libvirt_errors("list domains"):
        return [Guest(d) for d in conn.listAllDomains(flags)]


def running_guests(conn: libvirt.virConnect) -> list[Guest]:
    return all_guests(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)


def persistent_guests(conn: libvirt.virConnect) -> list[Guest]:
    return all_guests(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)


def list_domains(conn: libvirt.virConnect) -> list[tuple[str, str]]:
    """(name, state) of every domain, sorted."""
    with libvirt_errors("list domains"):
        return sorted((d.name(), STATE_NAMES.get(d.state()[0], "unknown"))
                      for d in conn.listAllDomains(0))


def destroy_and_undefine(conn: libvirt.virConnect, name: str) -> bool:
    """Power off and undefine ``name`` if it exists; True when something was removed."""
    g = find(conn, name)
    if g is None:
        return False
    g.destroy()
    g.undefine()
    return True


def power_off(conn: libvirt.virConnect, name: str) -> bool:
    """Destroy ``name`` if it runs (a fence: no guest cooperation); True if it did."""
    g = find(conn, name)
    return g is not None and g.destroy()


def define_and_start(conn: libvirt.virConnect, xml: str, name: str) -> None:
    """Define ``xml`` and start it. A start that fails (a disk lease still held by the
    old host's virtlockd, say) leaves no new definition behind: the caller retries
    later and never forces."""
    existed = find(conn, name) is not None
    with libvirt_errors(f"define {name}"):
        g = Guest(conn.defineXML(xml))
    try:
        g.start()
    except AhvliteError:
        if not existed:
            g.undefine_keeping_state(f"undo define {name}")
        raise


def remove_stale(conn: libvirt.virConnect, name: str, uuid: str) -> bool:
    """Undefine a shut-off definition of ``name`` with ``uuid`` (never a running one)."""
    g = find(conn, name)
    if g is None:
        return False
    with libvirt_errors(f"remove stale {name}"):
        if g.dom.isActive() or g.dom.UUIDString() != uuid:
            return False
    g.undefine_keeping_state(f"remove stale {name}")
    return True
