"""VM disks as iSCSI LUNs through the host's redirector: the designer's network disk."""

from __future__ import annotations

import subprocess

from ahvlite.cluster import luns
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.vm import DiskSpec, VmSpec
from ahvlite.virt.designer import Design, DiskPlacement, HostPolicy, IscsiDiskPlacement, design

VOL = "vm-web-disk0-ab12cd34.raw"


def _design(places, tmp_path=None):
    spec = VmSpec(name="web", memory_mib=128, disks=[
        DiskSpec(name="disk0", volume=VOL), DiskSpec(name="seed", volume="seed.iso", cdrom=True)])
    return design(spec, Design(host=HostPolicy(), disks=places))


def test_network_disk_through_the_local_redirector(tmp_path):
    iscsi = ClusterSpec(name="c", shared_pool="p", storage="iscsi")
    places = {"disk0": luns.placement(iscsi, VOL, f"/pool/{VOL}", "raw"),
              "seed": luns.placement(iscsi, "seed.iso", "/pool/seed.iso", "raw", cdrom=True)}
    assert isinstance(places["disk0"], IscsiDiskPlacement)
    assert not isinstance(places["seed"], IscsiDiskPlacement)  # CD-ROMs stay files
    dom = _design(places)
    disk, seed = dom.devices.disks
    assert (disk.type, disk.device, disk.source_protocol, disk.source_name) == (
        "network", "disk", "iscsi", f"iqn.2024-01.io.ahvlite:vol:{VOL}/1")
    assert (disk.source_host, disk.source_port) == ("127.0.0.1", "3261")
    assert (disk.target_bus, disk.driver_type, disk.driver_cache) == ("scsi", "raw", "none")
    assert disk.source_file is None and seed.source_file == "/pool/seed.iso"
    # The rendered spec (what HA keeps) still names the volume, not the transport.
    assert '"volume":"vm-web-disk0-ab12cd34.raw"' in dom.meta.spec_json
    path = tmp_path / "d.xml"
    path.write_text(dom.to_xml())
    ok = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr


def test_dir_clusters_keep_files():
    plain = ClusterSpec(name="c", shared_pool="p")
    place = luns.placement(plain, VOL, f"/pool/{VOL}", "raw")
    assert type(place) is DiskPlacement
    assert _design({"disk0": place, "seed": DiskPlacement("/pool/seed.iso", None, "raw")}
                   ).devices.disks[0].source_file == f"/pool/{VOL}"
