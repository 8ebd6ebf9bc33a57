"""HostFacts: what ahvlite knows about a host, from libvirt and from SSH."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CpuFacts(BaseModel):
    arch: str
    vendor: str | None = None
    model: str | None = None
    features: list[str] = Field(default_factory=list)
    host_model: str | None = None  # domain capabilities host-model (what a guest can get)
    host_model_features: list[str] = Field(default_factory=list)
    sockets: int = 0
    cores: int = 0  # per socket
    threads: int = 0  # per core
    online_cpus: int = 0


class NumaCell(BaseModel):
    id: int
    memory_mib: int
    cpus: list[int] = Field(default_factory=list)


class HugePages(BaseModel):
    size_kib: int
    total: int
    free: int


class PciDevice(BaseModel):
    address: str  # DDDD:BB:SS.F
    class_code: str | None = None  # 0x010802 ...
    vendor_id: str | None = None
    vendor: str | None = None
    product_id: str | None = None
    product: str | None = None
    driver: str | None = None
    iommu_group: int | None = None


class PoolFacts(BaseModel):
    name: str
    active: bool
    type: str
    path: str | None = None
    capacity_mib: int | None = None
    available_mib: int | None = None


class RemoteFacts(BaseModel):
    """What only a shell on the host can tell (via SSH)."""

    iommu_cmdline: list[str] = Field(default_factory=list)  # intel_iommu=on, iommu=pt ...
    iommu_groups_populated: bool = False
    vfio_modules: list[str] = Field(default_factory=list)
    ovs_version: str | None = None


class HostFacts(BaseModel):
    name: str
    hostname: str
    libvirt_version: str
    qemu_version: str
    domain_types: list[str]
    kvm_available: bool
    kvm_works: bool | None = None  # None: not probed; the lab records its probe
    cpu: CpuFacts
    numa: list[NumaCell] = Field(default_factory=list)
    memory_total_mib: int
    memory_free_mib: int
    hugepages: list[HugePages] = Field(default_factory=list)
    pci_devices: list[PciDevice] = Field(default_factory=list)
    pools: list[PoolFacts] = Field(default_factory=list)
    remote: RemoteFacts | None = None
    remote_error: str | None = None
