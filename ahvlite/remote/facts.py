"""Host facts only a shell can tell: IOMMU, vfio, OVS version (over SSH)."""

from __future__ import annotations

from ahvlite.remote.ssh import SshPool, SshTarget, run
from ahvlite.spec.facts import RemoteFacts

IOMMU_WORDS = ("intel_iommu=", "amd_iommu=", "iommu=", "iommu.passthrough=")
VFIO_MODULES = ("vfio", "vfio_pci", "vfio_iommu_type1", "vfio_pci_core")

# One round trip: each section is framed so an empty one is still recognisable.
_SCRIPT = (
    "echo '#cmdline'; cat /proc/cmdline; "
    "echo '#groups'; ls /sys/kernel/iommu_groups 2>/dev/null | head -n 1; "
    "echo '#modules'; ls -d /sys/module/vfio* 2>/dev/null; "
    "echo '#ovs'; (ovs-vswitchd --version 2>/dev/null || true) | head -n 1"
)


def parse_remote_facts(text: str) -> RemoteFacts:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#"):
            current = line[1:]
            sections[current] = []
        elif current:
            sections[current].append(line.strip())
    words = " ".join(sections.get("cmdline", [])).split()
    modules = sorted({m.rsplit("/", 1)[-1] for m in sections.get("modules", []) if m}
                     & set(VFIO_MODULES))
    ovs = next((line for line in sections.get("ovs", []) if line), None)
    return RemoteFacts(
        iommu_cmdline=[w for w in words if w.startswith(IOMMU_WORDS)],
        iommu_groups_populated=any(sections.get("groups", [])),
        vfio_modules=modules,
        ovs_version=ovs.split()[-1] if ovs else None,
    )


def gather(target: SshTarget, *, pool: SshPool | None = None) -> RemoteFacts:
    return parse_remote_facts(run(target, ["sh", "-c", _SCRIPT], timeout_s=20,
                                  pool=pool).stdout)
