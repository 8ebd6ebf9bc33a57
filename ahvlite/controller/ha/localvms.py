"""This host's protected VMs through its own libvirt (the agent's :class:`LocalVms`)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ahvlite.controller.ha.agent import LocalVm
from ahvlite.errors import AhvliteError
from ahvlite.sched.restart import VmRecord
from ahvlite.virt import failover, guest
from ahvlite.virt.conn import close_quietly, open_connection
from ahvlite.virt.conn import is_alive as conn_alive

log = logging.getLogger(__name__)


class LibvirtLocal:
    """One connection to the local libvirtd, opened again after any failure."""

    def __init__(self, uri: str, *, timeout_s: float = 5.0) -> None:
        self.uri = uri
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._mu = threading.Lock()

    def _connection(self) -> Any:
        with self._mu:
            if self._conn is not None and not conn_alive(self._conn):
                close_quietly(self._conn)
                self._conn = None
            if self._conn is None:
                self._conn = open_connection(self.uri, timeout_s=self.timeout_s)
            return self._conn

    def _drop(self) -> None:
        with self._mu:
            if self._conn is not None:
                close_quietly(self._conn)
                self._conn = None

    def running(self) -> list[LocalVm] | None:
        try:
            facts = failover.running_facts(self._connection())
        except AhvliteError as exc:
            log.warning("agent: local libvirt does not answer: %s", exc.message)
            self._drop()
            return None
        return [LocalVm(f.name, f.uuid, f.epoch) for f in facts
                if VmRecord(f.name, "", f.memory_mib, True, f.labels,
                            f.has_pci_hostdev).protected]

    def power_off(self, names: list[str], deadline_s: float) -> set[str]:
        try:
            conn = self._connection()
        except AhvliteError as exc:
            log.error("agent: cannot fence, local libvirt does not answer: %s", exc.message)
            return set()
        return failover.power_off_many(conn, names, deadline_s)

    def power_on(self, name: str) -> None:
        guest.lookup(self._connection(), name).start()
