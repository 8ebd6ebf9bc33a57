"""A host that dies while an operation holds its connection (a pooled connection whose
peer lost power answers the next call with libvirt's keepalive timeout) counts as
unreachable from then on: reads go on without it instead of failing whole."""

from __future__ import annotations

import libvirt
import pytest

from ahvlite.cluster import vms
from ahvlite.errors import HostUnreachable, OperationFailed
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt.conn import translate
from tests.testdriver import POOL

pytestmark = pytest.mark.functional

CLUSTER = ClusterSpec(name="tl", shared_pool=POOL,
                      hosts=[HostSpec(name="h1", uri="test:///default"),
                             HostSpec(name="h2", uri="test:///default")])


def _error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    # libvirt's own error record: (code, domain, message, level, ...)
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return exc


def test_an_rpc_layer_internal_error_is_a_lost_host_not_a_failed_request() -> None:
    lost = translate(_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
                            "internal error: connection closed due to keepalive timeout"),
                     "host memory")
    assert isinstance(lost, HostUnreachable)
    assert "keepalive timeout" in lost.message
    other = translate(_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU,
                             "internal error: qemu unexpectedly closed the monitor"), "start")
    assert type(other) is OperationFailed


def test_a_host_lost_during_a_read_is_dropped_and_the_read_goes_on() -> None:
    with vms.connect(CLUSTER) as hosts:
        assert set(hosts.conns) == {"h1", "h2"}
        h2_conn = hosts.conns["h2"]

        def memory(host: str, conn: libvirt.virConnect) -> int:
            if host == "h2":
                raise translate(_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
                                       "connection closed due to keepalive timeout"), host)
            return int(conn.getInfo()[1])

        got = hosts.each(memory)
        assert set(got) == {"h1"} and got["h1"] > 0
        assert "h2" not in hosts.conns and "keepalive" in hosts.errors["h2"]
        caps = {c.name: c for c in vms.capacities(hosts)}
        assert caps["h1"].reachable and not caps["h2"].reachable
        with pytest.raises(HostUnreachable, match="keepalive"):
            hosts.conn("h2")
    # The dead host's connection was closed, never handed back for reuse.
    with pytest.raises(libvirt.libvirtError):
        h2_conn.getInfo()
