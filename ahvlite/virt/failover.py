"""What HA reads from a host's domains (their metadata and state) and the one bulk
intent it needs: fence many domains at once, bounded. Power operations themselves are
:mod:`ahvlite.virt.guest`'s. Used by ``controller/ha`` (the leader's service and the
host agent)."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import libvirt

from ahvlite.errors import AhvliteError
from ahvlite.virt import guest
from ahvlite.virt.conn import libvirt_errors
from ahvlite.virt.guest import Guest

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


def _facts(g: Guest, *, inactive: bool) -> DomainFacts | None:
    dom = g.dom
    try:
        parsed = g.config(inactive=inactive)
        with libvirt_errors(f"facts of {g.name}"):
            state, reason = dom.state()
            active = bool(dom.isActive())
            memory_mib = int(dom.info()[1]) // 1024
    except AhvliteError:
        return None  # undefined meanwhile
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
    return DomainFacts(g.name, dom.UUIDString(), active, memory_mib, labels,
                       parsed.has_pci_hostdev, epoch, spec, nvram, shut_down, migrating)


def domain_facts(conn: libvirt.virConnect) -> list[DomainFacts]:
    """Every persistent domain of the host, with what its metadata says."""
    found = (_facts(g, inactive=True) for g in guest.persistent_guests(conn))
    return [f for f in found if f is not None]


def running_facts(conn: libvirt.virConnect) -> list[DomainFacts]:
    """The running domains (their live definitions)."""
    found = (_facts(g, inactive=False) for g in guest.running_guests(conn))
    return [f for f in found if f is not None and f.active]


def power_off_many(conn: libvirt.virConnect, names: list[str], deadline_s: float) -> set[str]:
    """Destroy ``names`` at once (a libvirt connection serves several threads); the names
    known to be off within ``deadline_s``. A destroy still pending then is abandoned to
    its thread: the caller's watchdog covers it."""
    def one(name: str) -> str | None:
        try:
            guest.power_off(conn, name)
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
