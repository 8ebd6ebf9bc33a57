"""libvirt intents for HA: what runs on a host, restart from a rendered definition,
fence (many at once, bounded), and drop a stale definition. Used by ``controller/ha``
(the leader's service and the host agent)."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import libvirt

from ahvlite.errors import AhvliteError
from ahvlite.virt.conn import libvirt_errors, or_none
from ahvlite.virt.xml.domain import Domain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    active: bool
    memory_mib: int
    labels: dict[str, str]
    has_pci_hostdev: bool
    epoch: int = 0  # the HA incarnation in the domain's metadata
    spec: dict[str, Any] | None = None  # the designer's spec in the metadata, if any
    nvram_volume: str | None = None
    # Off because its guest shut down, or its owner powered it off through ahvlite (not
    # destroyed by a fence, nor killed with its host): HA leaves it off.
    shut_down: bool = False
    # One end of a live migration, paused by it (the destination until the switch-over,
    # the source in post-copy): with the other end it is one VM, not two copies.
    migrating: bool = False


def _facts(dom: libvirt.virDomain, flags: int) -> DomainFacts | None:
    try:
        with libvirt_errors(f"facts of {dom.name()}"):
            xml = dom.XMLDesc(flags)
            state, reason = dom.state()
            active = bool(dom.isActive())
            memory_mib = int(dom.info()[1]) // 1024
    except AhvliteError:
        return None  # undefined meanwhile
    parsed = Domain.parse(xml)
    meta = parsed.meta
    labels = meta.labels if meta is not None else {}
    epoch, spec, nvram = 0, None, None
    if meta is not None:
        # Metadata anyone with libvirt access could have written: junk is no spec.
        try:
            epoch = int(meta.epoch or 0)
        except ValueError:
            epoch = 0
        try:
            raw = json.loads(meta.spec_json) if meta.spec_json else None
            spec = raw if isinstance(raw, dict) else None
        except ValueError:
            spec = None
        nvram = meta.nvram_volume or None
    shut_down = state == libvirt.VIR_DOMAIN_SHUTOFF and (
        reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
        or (meta is not None and meta.power == "off"))
    migrating = state == libvirt.VIR_DOMAIN_PAUSED and reason in (
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)
    return DomainFacts(dom.name(), dom.UUIDString(), active, memory_mib, labels,
                       bool(parsed.el.findall("devices/hostdev[@type='pci']")), epoch, spec,
                       nvram, shut_down, migrating)


def domain_facts(conn: libvirt.virConnect) -> list[DomainFacts]:
    """Every persistent domain of the host, with what its metadata says."""
    with libvirt_errors("list domains"):
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
    found = (_facts(d, libvirt.VIR_DOMAIN_XML_INACTIVE) for d in doms)
    return [f for f in found if f is not None]


def running_facts(conn: libvirt.virConnect) -> list[DomainFacts]:
    """The running domains (their live definitions)."""
    with libvirt_errors("list running domains"):
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    found = (_facts(d, 0) for d in doms)
    return [f for f in found if f is not None and f.active]


def power_off_many(conn: libvirt.virConnect, names: list[str], deadline_s: float) -> set[str]:
    """Destroy ``names`` at once (a libvirt connection serves several threads); the names
    known to be off within ``deadline_s``. A destroy still pending then is abandoned to
    its thread: the caller's watchdog covers it."""
    def one(name: str) -> str | None:
        try:
            power_off(conn, name)
            return name
        except AhvliteError as exc:
            log.error("fence: %s", exc.message)
            return None

    if not names:
        return set()
    pool = ThreadPoolExecutor(len(names), thread_name_prefix="fence")
    futures = [pool.submit(one, n) for n in names]
    wait(futures, timeout=deadline_s)
    pool.shutdown(wait=False)
    return {name for f in futures if f.done() and (name := f.result()) is not None}


def is_alive(conn: libvirt.virConnect) -> bool:
    """Whether the connection is still open (a local check, no round trip)."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


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
