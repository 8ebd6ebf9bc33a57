"""Well-known label keys in cluster files."""

# Whether KVM really boots guests on a host ("kvm") or it needs TCG ("qemu"); written
# by whoever probed it (the lab does at `lab up`).
DOMAIN_TYPE_LABEL = "ahvlite.io/domain-type"
