"""One libvirt event-loop thread for the whole process.

libvirt delivers keepalive, close callbacks, stream data and domain events through
its event loop; registering the default implementation once and running it on a
daemon thread serves every connection.
"""

from __future__ import annotations

import threading

import libvirt

_lock = threading.Lock()
_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Start the event loop thread if it is not running. Call before opening connections."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _thread = threading.Thread(target=loop, name="libvirt-events", daemon=True)
        _thread.start()
