"""libvirt intents for HA: what runs on a host, restart from a saved definition, fence,
and drop a stale definition. Used by ``controller/ha`` (service and host agent)."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from ahvlite.errors import AhvliteError
from ahvlite.virt.conn import libvirt_errors, or_none
from ahvlite.virt.xml.domain import Domain


@dataclass(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    active: bool
    memory_mib: int
    labels: dict[str, str]
    has_pci_hostdev: bool
    xml: str  # the persistent (inactive) definition: what a restart defines elsewhere


def domain_facts(conn: libvirt.virConnect) -> list[DomainFacts]:
    """Every persistent domain of the host with its definition."""
    out = []
    with libvirt_errors("list domains"):
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
    for dom in doms:
        try:
            with libvirt_errors(f"facts of {dom.name()}"):
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                active = bool(dom.isActive())
                memory_mib = int(dom.info()[1]) // 1024
        except AhvliteError:
            continue  # undefined meanwhile
        parsed = Domain.parse(xml)
        labels = parsed.meta.labels if parsed.meta is not None else {}
        out.append(DomainFacts(dom.name(), dom.UUIDString(), active, memory_mib, labels,
                               "<hostdev" in xml, xml))
    return out


def is_alive(conn: libvirt.virConnect) -> bool:
    """Whether the connection is still open (a local check, no round trip)."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def running_names(conn: libvirt.virConnect) -> list[str]:
    with libvirt_errors("list running domains"):
        return sorted(d.name() for d in conn.listAllDomains(
            libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))


def define_and_start(conn: libvirt.virConnect, xml: str, name: str) -> None:
    """Define ``xml`` and start it. A start that fails (a disk lease still held by the
    old host's virtlockd, say) leaves no new definition behind: the caller retries
    later and never forces."""
    existed = or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                      context=f"look up {name}") is not None
    with libvirt_errors(f"define {name}"):
        dom = conn.defineXML(xml)
    try:
        with libvirt_errors(f"start {name}"):
            if not dom.isActive():
                dom.create()
    except AhvliteError:
        if not existed:
            _undefine_keeping_state(dom, f"undo define {name}")
        raise


def power_off(conn: libvirt.virConnect, name: str) -> bool:
    """Destroy ``name`` if it runs (a fence: no guest cooperation); True if it did."""
    dom = or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                  context=f"look up {name}")
    if dom is None:
        return False
    with libvirt_errors(f"power off {name}"):
        if not dom.isActive():
            return False
        dom.destroy()
    return True


def power_on(conn: libvirt.virConnect, name: str) -> None:
    with libvirt_errors(f"start {name}"):
        dom = conn.lookupByName(name)
        if not dom.isActive():
            dom.create()


# NVRAM and TPM state live with the definition but belong to the VM, which may run on
# another host now: a stale definition goes without them.
_KEEP_SHARED = libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_TPM


def remove_stale(conn: libvirt.virConnect, name: str, uuid: str) -> bool:
    """Undefine a shut-off definition of ``name`` with ``uuid`` (never a running one)."""
    dom = or_none(lambda: conn.lookupByName(name), missing=libvirt.VIR_ERR_NO_DOMAIN,
                  context=f"look up {name}")
    if dom is None:
        return False
    with libvirt_errors(f"remove stale {name}"):
        if dom.isActive() or dom.UUIDString() != uuid:
            return False
    _undefine_keeping_state(dom, f"remove stale {name}")
    return True


def _undefine_keeping_state(dom: libvirt.virDomain, context: str) -> None:
    # Drivers without the KEEP flags (test://) get a plain undefine, which libvirt
    # refuses for a domain with NVRAM: never loses the VM's state either way.
    try:
        dom.undefineFlags(_KEEP_SHARED)
        return
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            with libvirt_errors(context):
                raise
    with libvirt_errors(context):
        dom.undefine()
