"""Host facts from libvirt: capabilities, domain capabilities, node devices, pools.

The XML parsing is pure (strings in, models out), so it is tested on recorded XML; the
one function that talks to libvirt only fetches those strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import libvirt
from lxml import etree

from ahvlite.spec.facts import CpuFacts, HostFacts, HugePages, NumaCell, PciDevice, PoolFacts
from ahvlite.virt.conn import libvirt_errors

T = TypeVar("T")


def version_string(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def _cpulist(cells: list[etree._Element]) -> list[int]:
    return sorted(int(c.get("id", "0")) for c in cells)


def parse_capabilities(xml: str) -> tuple[CpuFacts, list[NumaCell], list[HugePages],
                                          list[str]]:
    """CPU, NUMA cells, hugepage sizes (without counts) and domain types."""
    root = etree.fromstring(xml.encode())
    cpu_el = root.find("host/cpu")
    topo = cpu_el.find("topology") if cpu_el is not None else None
    cpu = CpuFacts(
        arch=(cpu_el.findtext("arch") if cpu_el is not None else None) or "unknown",
        vendor=cpu_el.findtext("vendor") if cpu_el is not None else None,
        model=cpu_el.findtext("model") if cpu_el is not None else None,
        features=sorted(f.get("name", "") for f in (cpu_el.findall("feature")
                                                    if cpu_el is not None else [])),
        sockets=int(topo.get("sockets", "0")) if topo is not None else 0,
        cores=int(topo.get("cores", "0")) if topo is not None else 0,
        threads=int(topo.get("threads", "0")) if topo is not None else 0,
    )
    cells = []
    for cell in root.findall("host/topology/cells/cell"):
        mem = cell.find("memory")
        kib = int(mem.text or "0") if mem is not None else 0
        if mem is not None and mem.get("unit") not in (None, "KiB"):
            raise ValueError(f"unexpected memory unit {mem.get('unit')}")
        cells.append(NumaCell(id=int(cell.get("id", "0")), memory_mib=kib // 1024,
                              cpus=_cpulist(cell.findall("cpus/cpu"))))
    # Per-cell <pages size=..>COUNT</pages> hold the reserved counts; 4 KiB are not huge.
    totals: dict[int, int] = {}
    for page in root.findall("host/topology/cells/cell/pages"):
        size = int(page.get("size", "0"))
        if size > 4:
            totals[size] = totals.get(size, 0) + int(page.text or "0")
    for page in root.findall("host/cpu/pages"):
        size = int(page.get("size", "0"))
        if size > 4:
            totals.setdefault(size, 0)
    hugepages = [HugePages(size_kib=s, total=n, free=0) for s, n in sorted(totals.items())]
    types = sorted({d.get("type", "") for d in root.findall("guest/arch/domain")})
    return cpu, cells, hugepages, types


def parse_domain_capabilities(xml: str) -> tuple[str | None, list[str]]:
    """The host-model CPU a guest would get: model and required features."""
    root = etree.fromstring(xml.encode())
    mode = root.find("cpu/mode[@name='host-model']")
    if mode is None or mode.get("supported") != "yes":
        return None, []
    feats = sorted(f.get("name", "") for f in mode.findall("feature")
                   if f.get("policy") in ("require", None))
    return mode.findtext("model"), feats


def parse_pci_device(xml: str) -> PciDevice:
    root = etree.fromstring(xml.encode())
    cap = root.find("capability[@type='pci']")
    if cap is None:
        raise ValueError("not a PCI node device")

    def num(tag: str, width: int) -> str:
        return f"{int(cap.findtext(tag) or '0'):0{width}x}"

    vendor = cap.find("vendor")
    product = cap.find("product")
    group = cap.find("iommuGroup")
    return PciDevice(
        address=f"{num('domain', 4)}:{num('bus', 2)}:{num('slot', 2)}.{num('function', 1)}",
        class_code=cap.findtext("class"),
        vendor_id=vendor.get("id") if vendor is not None else None,
        vendor=(vendor.text or None) if vendor is not None else None,
        product_id=product.get("id") if product is not None else None,
        product=(product.text or None) if product is not None else None,
        driver=root.findtext("driver/name"),
        iommu_group=int(group.get("number", "0")) if group is not None else None,
    )


def parse_pool(xml: str, active: bool) -> PoolFacts:
    root = etree.fromstring(xml.encode())

    def mib(tag: str) -> int | None:
        text = root.findtext(tag)
        return int(text) // (1024 * 1024) if text and active else None

    return PoolFacts(name=root.findtext("name") or "", active=active,
                     type=root.get("type", ""), path=root.findtext("target/path"),
                     capacity_mib=mib("capacity"), available_mib=mib("available"))


def _unless_unsupported(call: Callable[[], T], default: T) -> T:
    """Drivers differ in what they implement (the test driver has no memory stats)."""
    try:
        return call()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        return default


def gather(conn: libvirt.virConnect, name: str) -> HostFacts:
    """Everything libvirt can tell about the host behind ``conn``."""
    with libvirt_errors(f"facts of {name}"):
        cpu, cells, hugepages, types = parse_capabilities(conn.getCapabilities())
        arch = cpu.arch if cpu.arch != "unknown" else "x86_64"
        kvm_available = "kvm" in types
        try:
            domcaps = conn.getDomainCapabilities(None, arch, None,
                                                 "kvm" if kvm_available else "qemu", 0)
            cpu.host_model, cpu.host_model_features = parse_domain_capabilities(domcaps)
        except libvirt.libvirtError:
            pass  # no domain capabilities for this arch: host-model stays unknown
        info = conn.getInfo()
        cpu.online_cpus = int(info[2])
        if hugepages and cells:
            sizes = [h.size_kib for h in hugepages]
            empty: dict[int, dict[int, int]] = {}
            free = _unless_unsupported(
                lambda: conn.getFreePages(sizes, 0, len(cells), 0), empty)
            hugepages = [h.model_copy(update={"free": sum(
                [int(per_cell.get(h.size_kib, 0)) for per_cell in free.values()])})
                for h in hugepages]
        mem = _unless_unsupported(
            lambda: conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0),
            {"total": int(info[1]) * 1024, "free": conn.getFreeMemory() // 1024})
        no_devices: list[libvirt.virNodeDevice] = []
        devices = _unless_unsupported(lambda: conn.listAllDevices(
            libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV), no_devices)
        pci = [parse_pci_device(d.XMLDesc(0)) for d in devices]
        pools = [parse_pool(p.XMLDesc(0), bool(p.isActive()))
                 for p in conn.listAllStoragePools(0)]
        return HostFacts(
            name=name, hostname=conn.getHostname(),
            libvirt_version=version_string(conn.getLibVersion()),
            qemu_version=version_string(conn.getVersion()),
            domain_types=types, kvm_available=kvm_available, cpu=cpu, numa=cells,
            memory_total_mib=int(mem.get("total", 0)) // 1024,
            memory_free_mib=int(mem.get("free", 0)) // 1024,
            hugepages=hugepages, pci_devices=sorted(pci, key=lambda d: d.address),
            pools=sorted(pools, key=lambda p: p.name))


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
