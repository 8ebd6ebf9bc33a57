"""Device objects under ``<devices>``: the ones ahvlite models."""

from __future__ import annotations

from lxml import etree

from ahvlite.virt.xml.base import Children, FlagProp, Int, OnOff, Str, XmlObject, YesNo
from ahvlite.virt.xml.hostdev import PciHostdev


class Disk(XmlObject):
    TAG = "disk"
    type = Str(attr="type")
    device = Str(attr="device")
    driver_name = Str("driver", attr="name")
    driver_type = Str("driver", attr="type")
    driver_cache = Str("driver", attr="cache")
    driver_discard = Str("driver", attr="discard")
    driver_queues = Int("driver", attr="queues")
    source_file = Str("source", attr="file")
    source_dev = Str("source", attr="dev")  # type='block' (CVM LUNs)
    source_protocol = Str("source", attr="protocol")  # type='network': iscsi
    source_name = Str("source", attr="name")  # type='network': IQN/LUN
    source_host = Str("source/host", attr="name")
    source_port = Str("source/host", attr="port")
    sgio = Str(attr="sgio")  # device='lun': which SCSI commands reach the device
    target_dev = Str("target", attr="dev")
    target_bus = Str("target", attr="bus")
    serial = Str("serial")
    boot_order = Int("boot", attr="order")
    readonly = FlagProp("readonly")
    alias = Str("alias", attr="name")


class Controller(XmlObject):
    TAG = "controller"
    type = Str(attr="type")
    model = Str(attr="model")
    index = Int(attr="index")
    queues = Int("driver", attr="queues")


class Interface(XmlObject):
    TAG = "interface"
    type = Str(attr="type")
    mac = Str("mac", attr="address")
    source_bridge = Str("source", attr="bridge")
    virtualport_type = Str("virtualport", attr="type")
    interface_id = Str("virtualport/parameters", attr="interfaceid")
    model = Str("model", attr="type")
    target_dev = Str("target", attr="dev")

    @property
    def vlan_tags(self) -> list[int]:
        return [int(t.get("id", "0")) for t in self.el.findall("vlan/tag")]

    @property
    def trunk(self) -> bool:
        vlan = self.el.find("vlan")
        return vlan is not None and vlan.get("trunk") == "yes"

    @property
    def native_vlan(self) -> int | None:
        tag = self.el.find("vlan/tag[@nativeMode]")
        return int(tag.get("id", "0")) if tag is not None else None


class Serial(XmlObject):
    TAG = "serial"
    type = Str(attr="type")
    log_file = Str("log", attr="file")
    log_append = Str("log", attr="append")
    target_port = Int("target", attr="port")


class Console(XmlObject):
    TAG = "console"
    type = Str(attr="type")
    target_type = Str("target", attr="type")
    target_port = Int("target", attr="port")


class Graphics(XmlObject):
    TAG = "graphics"
    type = Str(attr="type")
    port = Int(attr="port")
    autoport = YesNo(attr="autoport")
    listen = Str(attr="listen")

    def listen_address(self, address: str) -> None:
        self.listen = address
        for old in self.el.findall("listen"):
            self.el.remove(old)
        etree.SubElement(self.el, "listen", type="address", address=address)


class Video(XmlObject):
    TAG = "video"
    model = Str("model", attr="type")
    vram_kib = Int("model", attr="vram")
    heads = Int("model", attr="heads")


class Tpm(XmlObject):
    TAG = "tpm"
    model = Str(attr="model")
    backend_type = Str("backend", attr="type")
    backend_version = Str("backend", attr="version")


class MemBalloon(XmlObject):
    TAG = "memballoon"
    model = Str(attr="model")
    autodeflate = OnOff(attr="autodeflate")
    free_page_reporting = OnOff(attr="freePageReporting")
    stats_period_s = Int("stats", attr="period")


class Rng(XmlObject):
    TAG = "rng"
    model = Str(attr="model")
    backend_model = Str("backend", attr="model")
    backend = Str("backend")


class Devices(XmlObject):
    TAG = "devices"
    emulator = Str("emulator")
    disks = Children(Disk)
    controllers = Children(Controller)
    interfaces = Children(Interface)
    serials = Children(Serial)
    consoles = Children(Console)
    graphics = Children(Graphics)
    videos = Children(Video)
    tpms = Children(Tpm)
    rngs = Children(Rng)
    memballoons = Children(MemBalloon)
    hostdevs = Children(PciHostdev)
