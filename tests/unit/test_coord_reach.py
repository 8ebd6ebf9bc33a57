"""Which store members answer a TCP connection, on real loopback sockets."""

from __future__ import annotations

import socket

from ahvlite.controller.coord.reach import answering, is_local_address


def test_listening_members_answer_closed_ports_and_local_ones_do_not():
    with socket.socket() as up, socket.socket() as down:
        up.bind(("127.0.0.1", 0))
        up.listen()
        down.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        members = [("127.0.0.1", up.getsockname()[1]), ("127.0.0.1", down.getsockname()[1])]
        assert answering(members, 0.5, is_local=lambda _h: False) == [
            f"127.0.0.1:{up.getsockname()[1]}"]
        # A member on this host says nothing about the network around it.
        assert answering(members, 0.5) == []


def test_local_addresses():
    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.77")  # TEST-NET-1, never configured here
