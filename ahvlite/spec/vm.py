"""The VM vocabulary: VmSpec with its disks, NICs and boot settings, and their rules.

Field rules are pydantic constraints reported through ``spec.errors.build`` as
InvalidSpec(field, value, allowed); rules that need the cluster (networks, images,
host memory) are checked by ``cluster.vms`` before anything is created.
"""

from __future__ import annotations

import ipaddress
import random
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ahvlite.errors import InvalidSpec
from ahvlite.spec.text import check_text

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
NAME_ALLOWED = ("1 to 64 letters, digits, '-', '_' or '.', not starting with '.' or '-' "
                "(no spaces, quotes, '<', '&' or '/')")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_VCPUS = 240
DiskBus = Literal["scsi", "virtio", "sata", "ide"]
DISK_BUSES: tuple[str, ...] = ("scsi", "virtio", "sata", "ide")
FW_CFG_RE = re.compile(r"^opt/[A-Za-z0-9_./-]{1,50}$")
# Volumes of the shared pool named by a spec (template disks, seed ISOs): plain names.
VOLUME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}$")


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidSpec(field, value, NAME_ALLOWED)
    return value


def random_mac() -> str:
    """A locally administered MAC in QEMU's 52:54:00 range."""
    rnd = random.SystemRandom()
    return "52:54:00:" + ":".join(f"{rnd.randrange(256):02x}" for _ in range(3))


def new_uuid() -> str:
    return str(uuid.uuid4())


class DiskSpec(BaseModel):
    """A disk: an empty volume of ``size_mib``, or a clone of ``image``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # default disk0, disk1 ... by position
    size_mib: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] | None = None
    image: str | None = None
    bus: DiskBus = "scsi"
    full_clone: bool = False  # copy the image instead of a backing-file overlay
    path: str | None = None  # an existing file (used as is, never deleted)
    clone_of: str | None = None  # a shared-pool volume to clone (template disks)
    volume: str | None = None  # a shared-pool volume handed to the VM (deleted with it)
    cdrom: bool = False  # a read-only CD-ROM (raw image), e.g. a cloud-init seed

    @field_validator("bus", mode="before")
    @classmethod
    def _bus(cls, value: object) -> object:
        if value not in DISK_BUSES:
            raise InvalidSpec("disk.bus", value, f"one of {', '.join(DISK_BUSES)}")
        return value

    @field_validator("name", "image")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_name("disk.name", value)

    @field_validator("clone_of", "volume")
    @classmethod
    def _volumes(cls, value: str | None) -> str | None:
        if value is not None and not VOLUME_RE.fullmatch(value):
            raise InvalidSpec("disk.volume", value, "a volume name of the shared pool "
                              "(letters, digits, '_', '.', '+', '-'; no '/')")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else check_text("disk.path", value)

    @model_validator(mode="after")
    def _one_source(self) -> DiskSpec:
        sources = [s for s in (self.image, self.path, self.clone_of, self.volume)
                   if s is not None]
        if len(sources) > 1 or (not sources and self.size_mib is None):
            raise InvalidSpec("disk", self.model_dump(exclude_none=True, exclude_defaults=True),
                              "exactly one of size_mib, image, path, clone_of or volume "
                              "(size_mib may grow a clone)")
        if self.size_mib is not None and (self.path or self.volume):
            raise InvalidSpec("disk.size_mib", self.size_mib,
                              "unset for path and volume disks (they are used as they are)")
        return self

    def warnings(self) -> list[str]:
        if self.bus == "ide":
            which = f"disk {self.name}" if self.name else "a disk"
            return [f"{which} on bus ide: emulated IDE is slow; use scsi (virtio-scsi) "
                    "or virtio"]
        return []


class NicSpec(BaseModel):
    """A NIC on a network (a VLAN network of the cluster, or a bridge, untagged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str
    mac: str | None = None
    mode: Literal["access", "trunk"] = "access"
    trunk_vlans: tuple[int, ...] = ()
    # On a managed network: this address reserved for the NIC (else one from a pool).
    ip: ipaddress.IPv4Address | None = None

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        return check_name("nic.network", value)

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not MAC_RE.fullmatch(value) or int(value[:2], 16) & 1:
            raise InvalidSpec("nic.mac", value, "a unicast MAC like 52:54:00:12:34:56")
        return value.lower()

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("ip") is None:
            # No "ip": null in documents that never had one (domain metadata, HA
            # records, templates): they stay byte for byte what they were.
            out.pop("ip", None)
        return out

    @field_validator("ip", mode="before")
    @classmethod
    def _ip(cls, value: object) -> object:
        if value is None or isinstance(value, ipaddress.IPv4Address):
            return value
        try:
            return ipaddress.IPv4Address(value if isinstance(value, str) else "")
        except ValueError:
            raise InvalidSpec("nic.ip", value, "an IPv4 address like 10.10.0.50") from None

    @field_validator("trunk_vlans")
    @classmethod
    def _vlans(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for v in value:
            if not 1 <= v <= 4094:
                raise InvalidSpec("nic.trunk_vlans", v, "VLAN ids from 1 to 4094")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _mode(self) -> NicSpec:
        if self.mode == "trunk" and not self.trunk_vlans:
            raise InvalidSpec("nic.trunk_vlans", [], "at least one VLAN in trunk mode")
        if self.mode == "access" and self.trunk_vlans:
            raise InvalidSpec("nic.mode", self.mode, "trunk when trunk_vlans are set")
        return self


class BootSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    firmware: Literal["uefi", "bios"] = "bios"
    secure_boot: bool = False
    # Direct kernel boot (the lab guest): paths on the host.
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""

    @field_validator("kernel", "initrd", "cmdline")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_text(f"boot.{info.field_name}", value)

    @model_validator(mode="after")
    def _consistent(self) -> BootSpec:
        if self.secure_boot and self.firmware != "uefi":
            raise InvalidSpec("boot.secure_boot", True, "only with firmware uefi")
        if self.initrd and not self.kernel:
            raise InvalidSpec("boot.initrd", self.initrd, "only with boot.kernel")
        return self


class VmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    uuid: str = Field(default_factory=new_uuid)
    genid: str = Field(default_factory=new_uuid)  # VM Generation ID, new on every clone
    vcpus: Annotated[int, Field(ge=1, le=MAX_VCPUS)] = 1
    memory_mib: int = 1024
    overcommit: bool = False
    disks: list[DiskSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    boot: BootSpec = BootSpec()
    vtpm: bool = False
    serial_log: str | None = None  # host path for the serial console log
    fw_cfg: dict[str, str] = Field(default_factory=dict)  # opt/... entries for the guest
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name("name", value)

    @field_validator("uuid", "genid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except (ValueError, AttributeError, TypeError):
            raise InvalidSpec("uuid", value, "a UUID like "
                              "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e") from None

    @field_validator("memory_mib")
    @classmethod
    def _memory(cls, value: int) -> int:
        if not MIN_MEMORY_MIB <= value <= MAX_MEMORY_MIB:
            raise InvalidSpec("memory_mib", value,
                              f"from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")
        return value

    @field_validator("fw_cfg")
    @classmethod
    def _fw_cfg(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not FW_CFG_RE.fullmatch(key):
                raise InvalidSpec("fw_cfg", key, "keys like opt/ahvlite/ip (opt/ + "
                                  "letters, digits, '_', '.', '/', '-')")
            check_text(f"fw_cfg.{key}", text)
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            check_text("labels (key)", key)
            check_text(f"labels.{key}", text)
        return value

    @field_validator("serial_log")
    @classmethod
    def _serial_log(cls, value: str | None) -> str | None:
        return None if value is None else check_text("serial_log", value)

    @model_validator(mode="after")
    def _unique(self) -> VmSpec:
        names = [d.name for d in self.disks if d.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidSpec("disks.name", dupes[0], "each disk name once")
        macs = [n.mac for n in self.nics if n.mac]
        dupes = sorted({m for m in macs if macs.count(m) > 1})
        if dupes:
            raise InvalidSpec("nics.mac", dupes[0], "each MAC once")
        ips = [(n.network, n.ip) for n in self.nics if n.ip is not None]
        twice = sorted({str(ip) for net, ip in ips if ips.count((net, ip)) > 1})
        if twice:
            raise InvalidSpec("nics.ip", twice[0], "each address once per network")
        if self.boot.secure_boot and any(d.bus == "ide" for d in self.disks):
            raise InvalidSpec("disks.bus", "ide",
                              "scsi, virtio or sata with secure boot (it needs q35, "
                              "which has no IDE)")
        return self

    def disk_names(self) -> list[str]:
        """Each disk's name, defaulting to disk0, disk1 ... by position."""
        taken = {d.name for d in self.disks if d.name}
        out: list[str] = []
        n = 0
        for d in self.disks:
            if d.name:
                out.append(d.name)
                continue
            while f"disk{n}" in taken:
                n += 1
            out.append(f"disk{n}")
            taken.add(f"disk{n}")
        return out

    def with_macs(self) -> VmSpec:
        """This spec with a MAC on every NIC (random where none was given)."""
        used = {n.mac for n in self.nics if n.mac}
        nics = []
        for nic in self.nics:
            mac = nic.mac
            while mac is None or (mac in used and nic.mac is None):
                mac = random_mac()
            used.add(mac)
            nics.append(nic.model_copy(update={"mac": mac}))
        return self.model_copy(update={"nics": nics})

    def warnings(self) -> list[str]:
        return [w for d in self.disks for w in d.warnings()]


def parse_size_mib(text: str) -> int:
    """``10G``, ``512M``, ``512`` (MiB) -> MiB."""
    m = re.fullmatch(r"(\d+)\s*([MmGgTt]i?[Bb]?)?", text.strip())
    if not m:
        raise InvalidSpec("disk size", text, "a size like 512M, 10G or 1T")
    n = int(m.group(1))
    unit = (m.group(2) or "M")[0].upper()
    return n * {"M": 1, "G": 1024, "T": 1024 * 1024}[unit]


def parse_nic(text: str) -> NicSpec:
    """``NET``, ``NET:trunk=10,20``, ``NET:mac=52:54:...`` or ``NET:ip=10.10.0.50``
    (options joined by ``;``)."""
    from ahvlite.spec.errors import build

    network, _, rest = text.partition(":")
    values: dict[str, object] = {"network": network}
    for opt in filter(None, rest.split(";")):
        key, sep, val = opt.partition("=")
        if key == "trunk" and sep:
            try:
                values["trunk_vlans"] = tuple(int(v) for v in val.split(",") if v)
            except ValueError:
                raise InvalidSpec("nic.trunk_vlans", val, "VLAN ids like 10,20") from None
            values["mode"] = "trunk"
        elif key in ("mac", "ip") and sep:
            values[key] = val
        else:
            raise InvalidSpec("nic", text, "NET, NET:trunk=10,20, NET:mac=MAC or "
                              "NET:ip=ADDRESS (options joined by ';')")
    return build(NicSpec, **values)
