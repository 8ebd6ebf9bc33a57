"""Host layer logic: backoff, facts parsing (recorded XML), SSH facts parsing."""

from __future__ import annotations

import random
from pathlib import Path

from ahvlite.remote.facts import parse_remote_facts
from ahvlite.virt.backoff import Backoff
from ahvlite.virt.facts import (
    parse_capabilities,
    parse_domain_capabilities,
    parse_pci_device,
    version_string,
)

DATA = Path(__file__).parent.parent / "data" / "libvirt"


def test_backoff_grows_to_the_cap_within_jitter():
    b = Backoff(initial_s=0.5, factor=2, max_s=8, jitter=0.2)
    gen = b.delays(random.Random(7))
    delays = [next(gen) for _ in range(10)]
    bases = [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.8 <= d <= base * 1.2
    # Jitter really varies: two clients do not retry in lockstep.
    other = b.delays(random.Random(8))
    assert [next(other) for _ in range(10)] != delays


def test_capabilities_recorded_from_a_lab_host():
    cpu, cells, hugepages, types = parse_capabilities(
        (DATA / "capabilities-lab.xml").read_text())
    assert cpu.arch == "x86_64" and cpu.vendor == "Intel" and cpu.model
    assert "avx512f" in cpu.features
    assert (cpu.sockets, cpu.cores, cpu.threads) == (1, 2, 1)
    assert [c.id for c in cells] == [0] and cells[0].cpus == [0, 1]
    assert cells[0].memory_mib == 4810528 // 1024
    assert [h.size_kib for h in hugepages] == [2048, 1048576]
    assert types == ["kvm", "qemu"]


def test_domain_capabilities_host_model():
    model, feats = parse_domain_capabilities((DATA / "domcaps-lab-qemu.xml").read_text())
    assert model and feats and feats == sorted(feats)


def test_recorded_nvme_controller_parses_with_iommu_group_and_driver():
    dev = parse_pci_device((DATA / "nodedev-nvme.xml").read_text())
    assert dev.address == "0000:3b:00.0"
    assert dev.class_code == "0x010802"
    assert (dev.vendor_id, dev.product_id) == ("0x144d", "0xa808")
    assert dev.vendor == "Samsung Electronics Co Ltd"
    assert dev.driver == "nvme" and dev.iommu_group == 27


def test_version_string():
    assert version_string(9000000) == "9.0.0"
    assert version_string(7002022) == "7.2.22"


def test_remote_facts_parse_iommu_vfio_and_ovs():
    text = ("#cmdline\nBOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt quiet\n"
            "#groups\n0\n#modules\n/sys/module/vfio\n/sys/module/vfio_pci\n/sys/module/vfio_iommu_type1\n"
            "#ovs\novs-vswitchd (Open vSwitch) 3.1.0\n")
    f = parse_remote_facts(text)
    assert f.iommu_cmdline == ["intel_iommu=on", "iommu=pt"]
    assert f.iommu_groups_populated is True
    assert f.vfio_modules == ["vfio", "vfio_iommu_type1", "vfio_pci"]
    assert f.ovs_version == "3.1.0"
    empty = parse_remote_facts("#cmdline\nquiet\n#groups\n#modules\n#ovs\n")
    assert (empty.iommu_cmdline, empty.iommu_groups_populated, empty.vfio_modules,
            empty.ovs_version) == ([], False, [], None)
