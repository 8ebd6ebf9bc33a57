"""The controller API for real: uvicorn over TLS on 127.0.0.1, certificates from our
own CA, the SQLite store, controllers that really lead and run tasks."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import ssl
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from ahvlite.clock import SYSTEM, FakeClock
from ahvlite.controller.api.app import ApiBackend, create_app
from ahvlite.controller.api.client import ApiClient
from ahvlite.controller.api.config import ClientConfig
from ahvlite.controller.api.server import serve_api
from ahvlite.controller.api.uploads import UploadArea
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.daemon import LEADER_KEY, Controller, Identity
from ahvlite.controller.kinds import registry
from ahvlite.controller.tasks import TaskStore
from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec, NotFound, Unauthorized
from ahvlite.lab import processes
from ahvlite.lab.services import controller_argv, free_ports, start_local_ensemble
from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, write_secret
from tests.waiting import wait_for

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.new("api test CA")
    ca.save(d / "ca")
    other = CertificateAuthority.new("another CA")

    def put(name, issued):
        (d / f"{name}.pem").write_bytes(issued.cert_pem)
        write_secret(d / f"{name}-key.pem", issued.key_pem)

    put("server", ca.issue("ctl", ips=("127.0.0.1",), server=True, client=False))
    put("admin", ca.issue("admin", server=False, client=True, unit=ADMINS_UNIT))
    put("expired", ca.issue("old", server=False, client=True, validity=-dt.timedelta(days=1),
                            unit=ADMINS_UNIT))
    put("stranger", other.issue("admin", server=False, client=True, unit=ADMINS_UNIT))
    # A host's libvirt client certificate: the same CA, but not an admin.
    put("host", ca.issue("h1", ips=("127.0.0.1",), dns=("h1",), server=False, client=True))
    return SimpleNamespace(dir=d, ca=d / "ca" / "cacert.pem")


def Clock() -> FakeClock:
    """Wall time that moves only when the test moves ``.now``."""
    return FakeClock(time.time())


@pytest.fixture
def cluster(pki, tmp_path):
    """Start API servers and controllers on one SQLite store; stops them all after."""
    servers, controllers = [], []

    def coord():
        return SqliteCoordinator(tmp_path / "store.db", session_timeout_s=2)

    def serve(c, name="ctl1", *, uploads=None, clock=SYSTEM):
        app = create_app(ApiBackend(c, name, registry(), uploads=uploads, clock=clock))
        h = serve_api(app, "127.0.0.1", 0, pki.dir / "server.pem", pki.dir / "server-key.pem",
                      pki.ca)
        h.url = f"https://127.0.0.1:{h.port}"
        servers.append(h)
        return h

    def controller(c, name, api_url=None):
        stop = threading.Event()
        ctl = Controller(c, Identity(name, "h", os.getpid()), registry(), heartbeat_s=0.2,
                         poll_s=0.05, api_url=api_url)
        t = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
        t.start()
        controllers.append((stop, t))
        return ctl

    yield SimpleNamespace(coord=coord, serve=serve, controller=controller, dir=tmp_path)
    for h in servers:
        h.stop()
    for stop, t in controllers:
        stop.set()
        t.join(10)


def client(pki, *urls, cert="admin", token=None, deadline_s=5.0, **kw):
    creds = ({"cert": pki.dir / f"{cert}.pem", "key": pki.dir / f"{cert}-key.pem"}
             if cert else {"token": token})
    cfg = ClientConfig(endpoints=list(urls), ca=pki.ca, deadline_s=deadline_s, **creds)
    return ApiClient(cfg, **kw)


def anonymous(pki):
    return httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)


def test_only_health_answers_without_credentials_and_nothing_is_written(pki, cluster):
    c = cluster.coord()
    area = UploadArea(cluster.dir / "up")
    s = cluster.serve(c, uploads=area)
    with anonymous(pki) as http:
        assert http.get(f"{s.url}/v1/health").json() == {"ok": True}
        for method, path, body in [("GET", "/v1/tasks", None), ("GET", "/v1/info", None),
                                   ("GET", "/v1/openapi.json", None),
                                   ("POST", "/v1/tasks", {"kind": "sleep", "params": {}}),
                                   ("POST", "/v1/auth/tokens", {"name": "x"}),
                                   ("POST", "/v1/uploads", None)]:
            r = http.request(method, s.url + path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        bad = {"Authorization": "Bearer " + "x" * 43}
        r = http.post(f"{s.url}/v1/tasks", json={"kind": "sleep"}, headers=bad)
        assert r.status_code == 401 and "not valid" in r.json()["message"]
        r = http.post(f"{s.url}/v1/tasks", json={"kind": "sleep"},
                      headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
        assert r.status_code == 401
    assert c.children("tasks") == {} and c.children("auth/tokens") == {}
    assert not area.directory.exists() or list(area.directory.iterdir()) == []


@pytest.mark.parametrize("cert", ["stranger", "expired"])
def test_a_certificate_the_ca_does_not_vouch_for_fails_the_handshake(pki, cluster, cert):
    c = cluster.coord()
    s = cluster.serve(c)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.dir / f"{cert}.pem", pki.dir / f"{cert}-key.pem")
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        # TLS 1.3: the server checks our certificate after our side of the handshake;
        # it then drops the connection (asyncio sends no alert): no answer ever comes.
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""
    with httpx.Client(verify=ctx, timeout=5) as http, pytest.raises(httpx.TransportError):
        http.get(f"{s.url}/v1/health")
    slept = []
    start = time.monotonic()
    # Checked at the first dropped connection, not before (commands that succeed never
    # pay for importing the certificate code).
    with client(pki, s.url, cert=cert, deadline_s=30, sleep=slept.append) as refused, \
            pytest.raises(Unauthorized, match=r"would be refused: it (expired|is issued by)"):
        refused.info()
    assert time.monotonic() - start < 5 and slept == []  # a refusal is not retried
    assert c.children("tasks") == {}


def test_a_hosts_certificate_of_the_same_ca_is_refused_and_an_admins_works(pki, cluster):
    c = cluster.coord()
    s = cluster.serve(c)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.dir / "host.pem", pki.dir / "host-key.pem")
    with httpx.Client(verify=ctx, timeout=10) as http:
        for method, path, body in [("GET", "/v1/info", None), ("GET", "/v1/tasks", None),
                                   ("POST", "/v1/tasks", {"kind": "sleep", "params": {}}),
                                   ("POST", "/v1/auth/tokens", {"name": "x"})]:
            r = http.request(method, s.url + path, json=body)
            assert r.status_code == 403, (path, r.text)
            assert "OU=ahvlite-admins" in r.json()["message"]
    with client(pki, s.url, cert="host") as host, pytest.raises(Unauthorized,
                                                                match="not an admin"):
        host.whoami()
    with client(pki, s.url) as admin:
        assert admin.whoami().principal == "cert:admin"
        admin.submit("sleep", {"steps": 1})
    assert len(c.children("tasks")) == 1 and c.children("auth/tokens") == {}


def test_certificate_and_token_principals_are_recorded_on_their_tasks(pki, cluster):
    clock = Clock()
    c = cluster.coord()
    s = cluster.serve(c, clock=clock)
    with client(pki, s.url) as admin:
        assert admin.whoami().principal == "cert:admin"
        made = admin.create_token("ci", ttl_s=60)
        assert made.created_by == "cert:admin" and made.expires_at == clock.now + 60
        with pytest.raises(Conflict):
            admin.create_token("ci")
        by_cert = admin.submit("sleep", {"steps": 1})
        assert [t.name for t in admin.tokens()] == ["ci"]
        # The store holds the hash, never the token.
        stored = c.children("auth/tokens")
        assert list(stored) == [hashlib.sha256(made.token.encode()).hexdigest()]
        assert made.token.encode() not in b"".join(v.value for v in stored.values())

        with client(pki, s.url, cert=None, token=made.token) as bot:
            who = bot.whoami()
            assert (who.principal, who.method) == ("token:ci", "token")
            by_token = bot.submit("sleep", {"steps": 1})
            with pytest.raises(Unauthorized, match="may not manage tokens"):
                bot.create_token("more")
            tasks = TaskStore(c)
            assert tasks.load(by_cert.id)[0].submitted_by == "cert:admin"
            assert tasks.load(by_token.id)[0].submitted_by == "token:ci"

            clock.now += 61  # past its expiry
            with pytest.raises(Unauthorized, match="not valid"):
                bot.whoami()
            clock.now -= 61
            assert bot.whoami().principal == "token:ci"
            admin.revoke_token("ci")
            with pytest.raises(Unauthorized, match="not valid"):
                bot.submit("sleep", {})
        with pytest.raises(NotFound):
            admin.revoke_token("ci")
    assert len(c.children("tasks")) == 2 and c.children("auth/tokens") == {}


def test_bad_requests_name_the_field(pki, cluster):
    s = cluster.serve(cluster.coord())
    with client(pki, s.url) as api:
        for kind, params, field in [("nope", {}, "kind"), ("sleep", {"steps": 0}, "steps"),
                                    ("sleep", {"step_s": "slow"}, "step_s")]:
            with pytest.raises(InvalidSpec) as exc:
                api.submit(kind, params)
            assert exc.value.field == field
        with pytest.raises(InvalidSpec) as exc:
            api.get("/v1/tasks/x", wait_s=600)
        assert exc.value.field == "wait_s" and exc.value.value == "600"
        with pytest.raises(InvalidSpec) as exc:
            api.get("/v1/stats", hots="h1")
        assert exc.value.field == "hots"
        with pytest.raises(NotFound):
            api.task("0000000000000-deadbeef")
        with pytest.raises(NotFound):
            api.get("/v1/stats", host="h9")


def test_a_task_submitted_through_the_api_runs_on_the_leader_and_wait_follows_it(pki, cluster):
    c = cluster.coord()
    cluster.controller(c, "ctl1")
    s = cluster.serve(c)
    seen = []
    with client(pki, s.url) as api:
        wait_for(lambda: api.info().leader is not None, 10)
        task = api.submit("sleep", {"steps": 4, "step_s": 0.2})
        assert task.state == "queued" and task.version == 0
        done = api.wait(task.id, lambda pct, msg: seen.append((pct, msg)), timeout_s=30)
    assert done.state == "succeeded" and done.result == {"steps": 4}
    assert done.owner == "ctl1" and done.submitted_by == "cert:admin"
    pcts = [p for p, _ in seen]
    assert pcts == sorted(pcts) and seen[-1] == (100, "done")
    assert {(50, "step 2/4"), (75, "step 3/4")} <= set(seen)  # progress, not just the end


def test_long_poll_answers_at_the_change_or_after_wait_s(pki, cluster):
    c = cluster.coord()
    s = cluster.serve(c)
    with client(pki, s.url) as api:
        task, other = api.submit("sleep", {}), api.submit("sleep", {})
        start = time.monotonic()
        same = api.get(f"/v1/tasks/{task.id}", wait_s=1, after_version=0)
        assert same["version"] == 0 and 0.9 <= time.monotonic() - start < 5
        threading.Timer(0.5, lambda: TaskStore(c).cancel(task.id)).start()
        start = time.monotonic()
        got = api.get(f"/v1/tasks/{task.id}", wait_s=20, after_version=0)
        assert got["state"] == "cancelled" and got["version"] == 1
        assert time.monotonic() - start < 5
        # Long-polls hold no server thread: more of them than the pool has threads
        # (40) still leave room for everything else.
        answers = []
        waiters = [threading.Thread(target=lambda: answers.append(api.get(
            f"/v1/tasks/{other.id}", wait_s=5, after_version=0)["version"]))
            for _ in range(45)]
        for w in waiters:
            w.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert api.whoami().principal == "cert:admin"
        assert time.monotonic() - start < 2.5  # with the pool used up: ~4.5 s
        for w in waiters:
            w.join()
        assert answers == [0] * 45  # each waited its 5 s and saw no change
        start = time.monotonic()  # an ended task answers at once
        assert api.get(f"/v1/tasks/{task.id}", wait_s=20, after_version=5)["version"] == 1
        assert time.monotonic() - start < 2


def test_reads_serve_what_the_store_holds(pki, cluster):
    c = cluster.coord()
    cluster.controller(c, "ctl1", api_url="https://ctl1.example:9440")
    s = cluster.serve(c)
    c.put("stats/h1", b'{"host": "h1", "cpus": 2, "vms": [{"name": "v1"}, {"name": "v2"}]}')
    c.put("stats/h2", b"not json")  # a bad record is left out, never a crash
    c.put("ha/status", b'{"mode": "guarantee"}')
    with client(pki, s.url) as api:
        info = wait_for(lambda: api.info().leader and api.info(), 10)
        assert info.controller == "ctl1" and info.leader.api == "https://ctl1.example:9440"
        assert [r["host"] for r in api.get("/v1/stats")] == ["h1"]
        assert [v["name"] for v in api.get("/v1/stats", vm="v2")[0]["vms"]] == ["v2"]
        assert api.get("/v1/ha/status") == {"mode": "guarantee"}
        status = api.get("/v1/controller/status")
        assert status["leader"]["name"] == "ctl1" and status["store"].startswith("sqlite://")
        doc = api.get("/v1/openapi.json")
    paths = set(doc["paths"])
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/cancel", "/v1/info",
            "/v1/stats", "/v1/ha/status", "/v1/controller/status", "/v1/uploads",
            "/v1/auth/tokens", "/v1/auth/whoami", "/v1/health"} <= paths
    assert {p["name"] for p in doc["paths"]["/v1/stats"]["get"]["parameters"]} == {"host", "vm"}


def test_the_client_moves_to_the_next_endpoint_when_one_dies(pki, cluster):
    c1, c2 = cluster.coord(), cluster.coord()
    cluster.controller(c1, "ctl1")
    cluster.controller(c2, "ctl2")
    s1, s2 = cluster.serve(c1, "ctl1"), cluster.serve(c2, "ctl2")
    with client(pki, s1.url, s2.url) as api:
        assert api.info().controller == "ctl1"
        s1.stop()
        assert api.info().controller == "ctl2"  # the same call, through the second
        task = api.submit("sleep", {"steps": 2, "step_s": 0})
        assert api.wait(task.id, timeout_s=20).state == "succeeded"
        assert api.endpoints[api._first] == s2.url  # starts from the one that worked


def test_the_client_retries_until_its_deadline_then_says_so(pki):
    dead = [f"https://127.0.0.1:{p}" for p in free_ports(2)]  # nothing listens there
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    with client(pki, *dead, clock=lambda: now[0], sleep=sleep) as api, \
            pytest.raises(HostUnreachable, match=r"within 5 s \(last: https://127\.0\.0\.1"):
        api.info()
    assert slept[:4] == [0.2, 0.4, 0.8, 1.6] and sum(slept) == pytest.approx(5.0)


def test_uploads_go_to_the_leader_with_their_checksum_and_within_the_cap(pki, cluster):
    c1, c2 = cluster.coord(), cluster.coord()
    a1, a2 = (UploadArea(cluster.dir / n, max_bytes=4 << 20) for n in ("up1", "up2"))
    s1 = cluster.serve(c1, "ctl1", uploads=a1)
    s2 = cluster.serve(c2, "ctl2", uploads=a2)
    cluster.controller(c1, "ctl1", api_url=s1.url)
    wait_for(lambda: c1.is_leader() and c1.get(LEADER_KEY), 10)
    cluster.controller(c2, "ctl2", api_url=s2.url)
    blob = cluster.dir / "disk.img"
    blob.write_bytes(os.urandom(3 << 20))
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.dir / "admin.pem", pki.dir / "admin-key.pem")
    with httpx.Client(verify=ctx, timeout=10) as http:
        r = http.post(f"{s2.url}/v1/uploads", content=b"abc")
        assert r.status_code == 307 and r.headers["location"] == f"{s1.url}/v1/uploads"
    assert not a2.directory.exists()
    sent = []
    with client(pki, s2.url) as api:  # knows only the follower
        up = api.upload(blob, sent.append)
        assert up.size == 3 << 20 and sent[-1] == 3 << 20
        assert up.sha256 == hashlib.sha256(blob.read_bytes()).hexdigest()
        assert (a1.directory / up.upload).read_bytes() == blob.read_bytes()

        big = cluster.dir / "big.img"
        big.write_bytes(b"\0" * ((4 << 20) + 1))
        with pytest.raises(InvalidSpec, match="at most 4194304 bytes"):
            api.upload(big)
    with httpx.Client(verify=ctx, timeout=10) as http:  # no length given: counted as it comes
        r = http.post(f"{s1.url}/v1/uploads", content=iter([b"\0" * (1 << 20)] * 5))
        assert r.status_code == 413 and r.json()["field"] == "size"
    assert sorted(p.name for p in a1.directory.iterdir()) == [up.upload]  # no leftovers


@pytest.fixture
def zk(tmp_path):
    ens = start_local_ensemble(tmp_path / "zk", 1)  # this test stops it: its own
    yield ens
    ens.stop()


def test_over_zookeeper_a_call_survives_the_leader_dying_and_a_dead_store_is_reported(
        pki, zk, tmp_path):
    """Two controller processes configured as the systemd unit does (environment)."""
    url = zk.url("api")
    recs = {}
    urls = {}
    for name, port in zip(("ctl1", "ctl2"), free_ports(2), strict=True):
        urls[name] = f"https://127.0.0.1:{port}"
        env = [f"AHVLITE_API_LISTEN=127.0.0.1:{port}",
               f"AHVLITE_API_CERT={pki.dir / 'server.pem'}",
               f"AHVLITE_API_KEY={pki.dir / 'server-key.pem'}",
               f"AHVLITE_API_CA={pki.ca}", f"AHVLITE_API_UPLOADS={tmp_path / name}"]
        recs[name] = processes.spawn(["env", *env, *controller_argv(name, url)],
                                     log=tmp_path / f"{name}.log", host="", role=name)
    try:
        # Two interpreters starting on a loaded 2-core machine: give them time to serve.
        with client(pki, *urls.values(), deadline_s=40) as probe:
            lead = wait_for(lambda: probe.info().leader, 40)
        assert lead.api == urls[lead.name]
        other = next(u for n, u in urls.items() if n != lead.name)
        with client(pki, lead.api, other, deadline_s=20) as api:  # the leader's API first
            task = api.submit("sleep", {"steps": 8, "step_s": 0.5})
            wait_for(lambda: api.task(task.id).state == "running", 10)
            first = api.task(task.id).owner
            processes.stop([recs[first]], grace_s=0)  # SIGKILL: no goodbye
            done = api.wait(task.id, timeout_s=60)
            assert done.state == "succeeded" and done.owner != first and done.attempts == 2
            assert api.info().leader.name != first
            assert api.endpoints[api._first] == other

        zk.stop()
        with client(pki, *urls.values(), deadline_s=4) as api:
            start = time.monotonic()
            with pytest.raises(HostUnreachable, match="within 4 s"):
                api.tasks()
            assert 4 <= time.monotonic() - start < 15
    finally:
        processes.stop(list(recs.values()), grace_s=2)
