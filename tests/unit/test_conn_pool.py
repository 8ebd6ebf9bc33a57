"""The connection pool lends each connection to one caller and never reuses a broken
one (libvirt's test driver: a real libvirt connection without a daemon)."""

from __future__ import annotations

import pytest

from ahvlite.virt.pool import ConnectionPool

URI = "test:///default"


def test_a_connection_given_back_is_lent_again_and_never_to_two_callers():
    pool = ConnectionPool()
    a = pool.acquire(URI)
    b = pool.acquire(URI)  # a is out: the second caller gets its own
    assert a is not b and pool.opened == 2
    pool.release(URI, a)
    assert pool.acquire(URI) is a and pool.opened == 2
    assert pool.counted() == {URI: {"opened": 2, "leased": 3}}  # what operations took
    pool.close()


def test_a_connection_back_from_a_failure_or_dead_is_not_reused():
    pool = ConnectionPool()
    with pytest.raises(RuntimeError), pool.lease(URI) as conn:
        raise RuntimeError("mid-call")
    with pool.lease(URI) as again:
        assert again is not conn
    dead = pool.acquire(URI)
    pool.release(URI, dead)
    dead.close()  # broke while idle
    fresh = pool.acquire(URI)
    assert fresh is not dead and pool.opened == 3
    pool.close()


def test_idle_connections_are_bounded_and_expire():
    pool = ConnectionPool(per_uri=1, idle_s=0)
    a, b = pool.acquire(URI), pool.acquire(URI)
    pool.release(URI, a)
    pool.release(URI, b)  # over the bound: closed
    assert pool.acquire(URI) is not a  # idle longer than idle_s: not lent
    pool.close()
