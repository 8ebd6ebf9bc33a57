"""What libvirt's ``test:///default`` driver holds, read the way the tests check it.

The driver keeps its state only while a connection to it is open, so a module that
relies on it holds one open (a fixture) and these open another to look.
"""

from __future__ import annotations

from ahvlite.virt import guest, storage
from ahvlite.virt.conn import connection

URI = "test:///default"
POOL = "default-pool"  # the storage pool the test driver starts with


def volumes(pool: str = POOL) -> set[str]:
    with connection(URI) as conn:
        return {v.name for v in storage.list_volumes(storage.lookup_pool(conn, pool))}


def domain_names() -> set[str]:
    with connection(URI) as conn:
        return {g.name for g in guest.all_guests(conn)}
