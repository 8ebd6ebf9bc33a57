"""IPAM against the real stores (embedded SQLite, and a real ZooKeeper): one address
per NIC however many allocate at once, all or nothing per batch, resumed tasks keep
their addresses, releases free exactly what they hold."""

from __future__ import annotations

import threading
import uuid
from ipaddress import IPv4Address as A

import pytest

from ahvlite.cluster import ipam
from ahvlite.cluster.ipamplan import NicWant
from ahvlite.controller.coord import open_store
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.errors import Conflict, InvalidSpec
from ahvlite.kv import Put
from ahvlite.spec.errors import build
from ahvlite.spec.network import NetworkSpec

pytestmark = pytest.mark.functional


def network(start: str = "10.10.0.100", end: str = "10.10.0.159") -> NetworkSpec:
    return build(NetworkSpec, networks=[
        {"name": "blue", "vlan": 10, "ipam": {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                                              "pools": [{"start": start, "end": end}]}},
        {"name": "red", "vlan": 20}])


@pytest.fixture(params=["sqlite", "zk"])
def stores(request, tmp_path):
    """A factory of clients of one store (each a controller's own session)."""
    if request.param == "sqlite":
        def make():
            return SqliteCoordinator(tmp_path / "store.db")
    else:
        zk = request.getfixturevalue("zk")
        url = zk.url(f"t{uuid.uuid4().hex[:8]}")

        def make():
            return open_store(url)
    opened: list = []

    def opener():
        c = make()
        opened.append(c)
        return c
    yield opener
    for c in opened:
        c.close()


def mac(i: int, vm: int = 0) -> str:
    return f"52:54:00:{vm:02x}:{i >> 8:02x}:{i & 0xff:02x}"


def want(i: int, vm: str = "v", vm_uuid: str = "u1", ip: str | None = None,
         net: str = "blue") -> NicWant:
    return NicWant(net, mac(i), vm, vm_uuid, A(ip) if ip else None)


def keys(store) -> tuple[list[str], list[str]]:
    return store.names("ipam/net/blue/addr"), store.names("ipam/net/blue/mac")


def test_allocate_reserve_resume_release(stores):
    s = stores()
    net = network()
    assert ipam.generation(s) == -1
    got = ipam.allocate(s, net, [want(1), want(2, ip="10.10.0.50")], by="t1", now=1.0)
    assert got == {mac(1): "10.10.0.100", mac(2): "10.10.0.50"}
    gen = ipam.generation(s)
    assert gen >= 0
    # A resumed task (same VM UUID) gets the same addresses and writes nothing.
    assert ipam.allocate(s, net, [want(1), want(2, ip="10.10.0.50")], by="t1",
                         now=2.0) == got
    assert ipam.generation(s) == gen
    # Another VM asking for that MAC, or that address: a Conflict naming what holds it.
    with pytest.raises(Conflict, match=f"MAC {mac(1)} on network blue belongs to v"):
        ipam.allocate(s, net, [want(1, vm="w", vm_uuid="u2")], by="t2", now=3.0)
    with pytest.raises(Conflict) as e:
        ipam.allocate(s, net, [want(3, vm="w", vm_uuid="u2"),
                               want(4, vm="w", vm_uuid="u2", ip="10.10.0.50")], by="t2", now=3.0)
    assert "address 10.10.0.50 on network blue is taken by v (52:54:00:00:00:02)" \
        in e.value.message
    assert keys(s) == (["10.10.0.100", "10.10.0.50"], [mac(1), mac(2)])  # nothing of w's
    listed = ipam.allocations(s, "blue")
    assert [(a.ip, a.mac, a.vm) for a in listed] == [("10.10.0.50", mac(2), "v"),
                                                     ("10.10.0.100", mac(1), "v")]
    assert set(ipam.by_mac(s, net)) == {mac(1), mac(2)}
    with pytest.raises(Conflict, match="network blue has 2 allocated"):
        ipam.check_deletable(s, "blue")
    # Release: another VM's UUID frees nothing; the owner's frees both, bumping gen.
    assert ipam.release(s, {mac(1): "blue"}.items(), "u2", now=4.0) == {}
    assert ipam.release(s, {mac(1): "blue", mac(2): "blue"}.items(), "u1", now=4.0) == {
        mac(1): "10.10.0.100", mac(2): "10.10.0.50"}
    assert ipam.generation(s) > gen
    assert keys(s) == ([], [])
    ipam.check_deletable(s, "blue")
    assert ipam.release(s, [(mac(1), "blue")], "u1", now=5.0) == {}  # again: nothing


def test_bad_requests_change_nothing(stores):
    s = stores()
    net = network(end="10.10.0.102")
    for ip, needle in (("10.10.1.5", "inside 10.10.0.0/24"), ("10.10.0.1", "gateway"),
                       ("10.10.0.254", "DHCP server")):
        with pytest.raises(InvalidSpec) as e:
            ipam.allocate(s, net, [want(1), want(2, ip=ip)], by="t", now=1.0)
        assert e.value.value == ip and needle in e.value.allowed
    with pytest.raises(InvalidSpec, match="each MAC once on network blue"):
        ipam.allocate(s, net, [want(1), want(1, vm="w", vm_uuid="u2")], by="t", now=1.0)
    with pytest.raises(InvalidSpec, match="each address once on network blue"):
        ipam.allocate(s, net, [want(1, ip="10.10.0.7"), want(2, vm="w", vm_uuid="u2",
                                                             ip="10.10.0.7")], by="t", now=1.0)
    with pytest.raises(InvalidSpec, match="a managed network"):
        ipam.allocate(s, net, [want(1, net="red")], by="t", now=1.0)
    with pytest.raises(Conflict, match="no free address for 4 NIC"):
        ipam.allocate(s, net, [want(i) for i in range(4)], by="t", now=1.0)
    assert keys(s) == ([], []) and ipam.generation(s) == -1
    assert len(ipam.allocate(s, net, [want(i) for i in range(3)], by="t", now=1.0)) == 3
    with pytest.raises(Conflict, match="3 of 3 in use"):
        ipam.allocate(s, net, [want(9, vm="w", vm_uuid="u2")], by="t", now=1.0)


def test_hostile_documents_are_skipped_not_trusted(stores):
    s = stores()
    net = network(end="10.10.0.101")
    s.transaction([Put("ipam/net/blue/addr/10.10.0.100", b"not json"),
                   Put("ipam/net/blue/addr/junk", b"{}"),
                   Put("ipam/net/blue/mac/52:54:00:99:99:99", b'{"ip": "x; dhcp-script"}'),
                   Put("ipam/net/blue/mac/nonsense", b'{"ip": "10.10.0.7"}')])
    assert ipam.allocations(s, "blue") == []
    # The address whose document is garbage still counts as taken.
    assert ipam.allocate(s, net, [want(1)], by="t", now=1.0) == {mac(1): "10.10.0.101"}


def _race(stores, batches: list[list[NicWant]], net: NetworkSpec) -> list[object]:
    """Each batch allocated by its own client in its own thread, all released at once."""
    clients = [stores() for _ in batches]
    gate = threading.Barrier(len(batches))
    out: list[object] = [None] * len(batches)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = ipam.allocate(clients[i], net, batches[i], by=f"t{i}", now=1.0)
        except Conflict as exc:
            out[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_two_deploys_at_once_never_get_the_same_address(stores):
    net = network()  # 60 addresses
    s = stores()
    seen: set[str] = set()
    for r in range(5):  # five rounds of two deploys of 6 NICs racing: the pool fills
        deploy = [[NicWant("blue", mac(i, 10 * r + vm), f"d{r}{vm}-{i}", f"u{r}{vm}-{i}")
                   for i in range(6)] for vm in (1, 2)]
        a, b = _race(stores, deploy, net)
        assert isinstance(a, dict) and isinstance(b, dict), (a, b)
        seen |= set(a.values()) | set(b.values())
        assert len(seen) == 12 * (r + 1)  # every NIC its own address
    assert len(keys(s)[0]) == 60 and len(keys(s)[1]) == 60
    # Two more at once into the full pool: both refused, nothing half-made.
    s.transaction([ipam.Delete(ipam.addr_key("blue", "10.10.0.100"))])  # one free
    more = [[NicWant("blue", mac(i, vm), f"e{vm}-{i}", f"w{vm}-{i}") for i in range(2)]
            for vm in (98, 99)]
    c, d = _race(stores, more, net)
    assert isinstance(c, Conflict) and isinstance(d, Conflict)
    assert "1 free" in c.message
    assert len(keys(s)[0]) == 59 and len(keys(s)[1]) == 60


def test_one_nic_at_a_time_from_two_threads(stores):
    # Two workers, 50 single allocations each, from 60 addresses: 60 distinct, 40 refused.
    net = network()
    clients = [stores(), stores()]
    gate = threading.Barrier(2)
    got: list[list[str]] = [[], []]
    refused = [0, 0]

    def run(w: int) -> None:
        gate.wait()
        for i in range(50):
            try:
                got[w] += ipam.allocate(clients[w], net,
                                        [NicWant("blue", mac(i, w + 1), f"v{w}-{i}",
                                                 f"u{w}-{i}")],
                                        by=f"w{w}", now=1.0).values()
            except Conflict as exc:
                assert "no free address" in exc.message, exc.message
                refused[w] += 1
    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    everything = got[0] + got[1]
    assert len(everything) == 60 and len(set(everything)) == 60
    assert sum(refused) == 40
    assert len(keys(stores())[0]) == 60


def test_what_may_change_while_addresses_are_allocated(stores):
    s = stores()
    old = network()
    ipam_of = {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
               "pools": [{"start": "10.10.0.100", "end": "10.10.0.159"}]}

    def blue(**change) -> NetworkSpec:
        return build(NetworkSpec, networks=[{"name": "blue", "vlan": 10,
                                             "ipam": {**ipam_of, **change}}])
    assert ipam.check_change(s, "blue", old.networks[0].ipam,
                             blue(subnet="10.20.0.0/24", gateway="10.20.0.1",
                                  pools=[{"start": "10.20.0.5", "end": "10.20.0.9"}]
                                  ).networks[0].ipam) == []  # nothing allocated yet
    ipam.allocate(s, old, [want(1), want(2, ip="10.10.0.50")], by="t", now=1.0)
    for new, needle in (
            (None, "cannot become unmanaged"),
            (blue(subnet="10.10.0.0/23").networks[0].ipam, "subnet cannot change"),
            (blue(dhcp_server="10.10.0.2").networks[0].ipam, "dhcp_server cannot change"),
            (blue(gateway="10.10.0.50").networks[0].ipam,
             "gateway 10.10.0.50 is the address of v")):
        with pytest.raises(Conflict, match=needle):
            ipam.check_change(s, "blue", old.networks[0].ipam, new)
    shrunk = blue(pools=[{"start": "10.10.0.120", "end": "10.10.0.130"}]).networks[0].ipam
    warned = ipam.check_change(s, "blue", old.networks[0].ipam, shrunk)
    assert len(warned) == 1 and "10.10.0.100 (v)" in warned[0]  # 10.10.0.50: reserved
    assert ipam.check_networks(s, old, blue(dns=["10.10.0.3"])) == []
    with pytest.raises(Conflict, match="network blue has 2 allocated"):
        ipam.check_networks(s, old, build(NetworkSpec, networks=[]))
