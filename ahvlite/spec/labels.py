"""Well-known label keys in cluster files."""

# Whether KVM really boots guests on a host ("kvm") or it needs TCG ("qemu"); written
# by whoever probed it (the lab does at `lab up`).
DOMAIN_TYPE_LABEL = "ahvlite.io/domain-type"

# A VM that must stay on its host: never live-migrated, never restarted elsewhere by HA,
# never moved by ADS (the CVM, VMs with PCI host devices). Value "true".
PINNED_LABEL = "ahvlite.io/pinned"

# What a VM is for; "cvm" marks the controller VM of a host.
ROLE_LABEL = "ahvlite.io/role"

# HA restart priority of a VM (integer, higher restarts first; absent = 0).
HA_PRIORITY_LABEL = "ahvlite.io/ha-priority"


def is_pinned(labels: dict[str, str], *, has_pci_hostdev: bool = False) -> bool:
    return has_pci_hostdev or labels.get(PINNED_LABEL, "").lower() == "true"
