"""Does KVM really boot guests here? Ask once per machine boot, by booting one.

``/dev/kvm`` can exist and still fail (nested virtualization without support), so
the only trustworthy probe is a guest reaching its ready line. The answer is cached
per kernel boot (``boot_id``): it cannot change before the machine reboots.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from ahvlite.lab.guest import GuestImages
from ahvlite.lab.layout import OVS_BRIDGE, LabLayout
from ahvlite.lab.paths import cache_dir
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import connection

READY = "AHVLITE-GUEST-READY"
PROBE_TIMEOUT_S = 60
# A working KVM guest prints its first kernel line within a second or two; under
# nested virtualization without support it starts yet never runs a single line.
FIRST_OUTPUT_S = 15


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def probe_domain_type(layout: LabLayout, images: GuestImages) -> tuple[str, str]:
    """Return (``kvm`` or ``qemu``, why)."""
    cache = cache_dir() / "domain-type.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("boot_id") == _boot_id():
            return cached["domain_type"], cached["reason"] + " (cached for this boot)"
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    if not Path("/dev/kvm").exists():
        result = ("qemu", "/dev/kvm is missing: TCG emulation")
    else:
        result = _try_kvm(layout, images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": _boot_id(), "domain_type": result[0],
                                 "reason": result[1]}))
    return result


def _try_kvm(layout: LabLayout, images: GuestImages) -> tuple[str, str]:
    host = layout.hosts[0]
    name = "ahvlite-kvm-probe"
    log_rel = Path("var/log/libvirt/qemu") / f"{name}-serial.log"
    address = layout.guest_addresses[0] if layout.guest_addresses else None
    cmdline = "console=ttyS0 quiet panic=-1"
    if address:
        cmdline += f" ahvlite.ip={address}"
    xml = designer.simple_domain_xml(SimpleGuest(
        name=name, uuid=str(uuid.uuid4()), domain_type="kvm", kernel=images.kernel,
        initrd=images.initrd, cmdline=cmdline, bridge=OVS_BRIDGE,
        serial_log=Path("/") / log_rel))
    log = host.state_dir / log_rel
    started = time.monotonic()
    with connection(layout.libvirt_uri(host)) as conn:
        guest.destroy_and_undefine(conn, name)
        try:
            dom = guest.define(conn, xml)
            dom.start()
        except Exception as exc:
            guest.destroy_and_undefine(conn, name)
            return "qemu", f"KVM refused to start a guest ({exc}): TCG emulation"
        try:
            while time.monotonic() - started < PROBE_TIMEOUT_S:
                if log.exists() and READY in log.read_text(errors="replace"):
                    took = time.monotonic() - started
                    return "kvm", f"a KVM guest booted to ready in {took:.1f} s"
                if dom.state() != "running":
                    return "qemu", "the KVM guest stopped before it was ready: TCG emulation"
                silent = not log.exists() or log.stat().st_size == 0
                if silent and time.monotonic() - started > FIRST_OUTPUT_S:
                    return "qemu", (f"a KVM guest started but printed nothing in "
                                    f"{FIRST_OUTPUT_S} s (nested KVM not usable): TCG emulation")
                time.sleep(0.2)
            return "qemu", (f"the KVM guest was not ready in {PROBE_TIMEOUT_S} s: "
                            "TCG emulation")
        finally:
            guest.destroy_and_undefine(conn, name)
