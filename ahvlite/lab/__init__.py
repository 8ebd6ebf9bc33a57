"""``ahvlite lab``: several KVM hosts on one Linux machine, built from namespaces."""
