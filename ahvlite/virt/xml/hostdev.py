"""PCI host devices and the tuning elements passthrough VMs need: ``<hostdev>``,
``<cputune>``, ``<memtune>`` and ``<memoryBacking>``."""

from __future__ import annotations

from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.virt.xml.base import Children, FlagProp, Int, MemoryProp, Str, XmlObject, YesNo


class PciHostdev(XmlObject):
    """``<hostdev mode='subsystem' type='pci'>`` with its host address."""

    TAG = "hostdev"
    mode = Str(attr="mode")
    type = Str(attr="type")
    managed = YesNo(attr="managed")
    driver_name = Str("driver", attr="name")
    alias = Str("alias", attr="name")

    @classmethod
    def for_address(cls, address: str, *, managed: bool = True) -> PciHostdev:
        """A managed VFIO hostdev for ``0000:3c:00.0``: libvirt unbinds the function
        from its host driver to vfio-pci at start and binds it back at stop."""
        dev = cls()
        dev.mode, dev.type, dev.managed = "subsystem", "pci", managed
        dev.driver_name = "vfio"
        dev.address = address
        return dev

    @property
    def address(self) -> str | None:
        a = self.el.find("source/address")
        if a is None:
            return None
        return (f"{int(a.get('domain', '0'), 0):04x}:{int(a.get('bus', '0'), 0):02x}:"
                f"{int(a.get('slot', '0'), 0):02x}.{int(a.get('function', '0'), 0):x}")

    @address.setter
    def address(self, value: str | None) -> None:
        source = self.el.find("source")
        if source is not None:
            self.el.remove(source)
        if value is None:
            return
        try:
            dom, bus, rest = value.split(":")
            slot, fn = rest.split(".")
            parts = int(dom, 16), int(bus, 16), int(slot, 16), int(fn, 16)
        except ValueError:
            raise InvalidSpec("hostdev.address", value, "a PCI address like 0000:3c:00.0") \
                from None
        source = etree.SubElement(self.el, "source")
        etree.SubElement(source, "address", domain=f"0x{parts[0]:04x}",
                         bus=f"0x{parts[1]:02x}", slot=f"0x{parts[2]:02x}",
                         function=f"0x{parts[3]:x}")


class VcpuPin(XmlObject):
    TAG = "vcpupin"
    vcpu = Int(attr="vcpu")
    cpuset = Str(attr="cpuset")


class CpuTune(XmlObject):
    TAG = "cputune"
    vcpupins = Children(VcpuPin)
    emulatorpin = Str("emulatorpin", attr="cpuset")

    @property
    def pins(self) -> dict[int, str]:
        return {p.vcpu or 0: p.cpuset or "" for p in self.vcpupins}


class MemTune(XmlObject):
    TAG = "memtune"
    hard_limit_mib = MemoryProp("hard_limit")


class MemoryBacking(XmlObject):
    TAG = "memoryBacking"
    locked = FlagProp("locked")
