"""ahvlite: the compute side of Nutanix AHV on ordinary Linux KVM hosts."""

__version__ = "0.1.0"
