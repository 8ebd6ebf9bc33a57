"""Changing the stored cluster spec (cluster/specwrite.py) over a real SQLite store:
concurrent changes both land, an apply planned on an older version writes nothing,
imported documents never overwrite the store's; the diff `cluster apply` shows
(spec/clusterdiff.py); which controller files a host entry may name (hostfiles)."""

from __future__ import annotations

import threading

import pytest

from ahvlite.cluster import hostfiles
from ahvlite.cluster.network import with_network
from ahvlite.cluster.specwrite import (
    apply_spec,
    change_spec,
    check_documents,
    document_keys,
    read_spec,
    spec_doc,
)
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.spec.cluster import ClusterSpec, HostSpec, SshSpec
from ahvlite.spec.clusterdiff import diff
from ahvlite.spec.errors import build
from ahvlite.spec.network import OvsdbSpec
from tests.stores import sqlite_state

SPEC = ClusterSpec(name="c", hosts=[HostSpec(name="h1", uri="test:///default")])


def test_two_concurrent_changes_both_land(tmp_path):
    state = sqlite_state(tmp_path)
    state.write_spec(SPEC, None)
    both_read = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def create(name: str, vlan: int) -> None:
        first = [True]

        def change(spec: ClusterSpec) -> ClusterSpec:
            if first[0]:  # the first read of each: both hold the same version now
                first[0] = False
                both_read.wait()
            return with_network(spec, name=name, vlan=vlan)

        try:
            change_spec(state, change)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=a) for a in (("blue", 10), ("red", 20))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    nets = {n.name: n.vlan for n in state.spec().network.networks}
    assert nets == {"blue": 10, "red": 20}
    assert state.spec_version() == 2  # two writes, none lost, none repeated


def test_a_stale_version_is_refused_by_the_store(tmp_path):
    state = sqlite_state(tmp_path)
    state.write_spec(SPEC, None)
    spec, version = read_spec(state)
    assert spec is not None and version == 0
    state.write_spec(with_network(spec, name="blue", vlan=10), version)
    with pytest.raises(Conflict):
        state.write_spec(with_network(spec, name="red", vlan=20), version)
    assert [n.name for n in state.spec().network.networks] == ["blue"]


def test_change_that_changes_nothing_writes_nothing_and_no_cluster_is_not_found(tmp_path):
    state = sqlite_state(tmp_path)
    with pytest.raises(NotFound, match="no cluster yet"):
        change_spec(state, lambda s: s)
    state.write_spec(SPEC, None)
    _, written = change_spec(state, lambda s: None)
    assert not written and state.spec_version() == 0
    _, written = change_spec(state, lambda s: s.model_copy())
    assert not written and state.spec_version() == 0


def test_apply_writes_the_spec_and_only_missing_documents_in_one_go(tmp_path):
    state = sqlite_state(tmp_path)
    state.put("ha", {"mode": "guarantee"})  # newer store state
    docs = {"cluster/state/ha": {"mode": "default"},
            "cluster/state/maintenance": {"hosts": {}},
            "templates/web": {"name": "web"}}
    out = apply_spec(state, SPEC, None, docs)
    assert out == {"spec_written": True, "kept": ["cluster/state/ha"],
                   "imported": ["cluster/state/maintenance", "templates/web"]}
    assert state.get("ha") == {"mode": "guarantee"}  # never overwritten
    assert state.get("maintenance") == {"hosts": {}}
    assert state.doc("templates", "web") == {"name": "web"}
    assert document_keys(state.store) == {"cluster/state/ha", "cluster/state/maintenance",
                                          "templates/web"}
    # Again: nothing to write at all.
    again = apply_spec(state, SPEC, 0, docs)
    assert again["spec_written"] is False and again["imported"] == []
    assert state.spec_version() == 0


def test_apply_planned_on_an_older_version_writes_nothing(tmp_path):
    state = sqlite_state(tmp_path)
    state.write_spec(SPEC, None)
    planned = 0
    # Someone else changes the spec between the plan and the write.
    change_spec(state, lambda s: with_network(s, name="blue", vlan=10))
    desired = SPEC.model_copy(update={"labels": {"site": "a"}})
    with pytest.raises(Conflict, match="changed since this apply was planned"):
        apply_spec(state, desired, planned, {"templates/web": {"name": "web"}})
    assert state.spec().labels == {} and state.doc("templates", "web") is None
    # A resumed apply whose write already happened finds it and writes nothing.
    state.write_spec(desired, 1)
    out = apply_spec(state, desired, planned, {})
    assert out["spec_written"] is False and state.spec_version() == 2


@pytest.mark.parametrize(("docs", "field"), [
    ({"cluster/spec": {}}, "documents"),
    ({"tasks/1": {}}, "documents"),
    ({"cluster/state/../x": {}}, "documents"),
    ({"templates/web": []}, "documents.templates/web"),
    ([], "documents"),
])
def test_documents_offered_for_import_are_checked(docs, field):
    with pytest.raises(InvalidSpec) as exc:
        check_documents(docs)
    assert exc.value.field == field


def test_the_diff_names_hosts_networks_pools_labels_and_documents():
    before = spec_doc(ClusterSpec(
        name="c", shared_pool="p1", labels={"a": "1", "b": "2"},
        hosts=[HostSpec(name="h1", uri="test:///default"),
               HostSpec(name="h2", uri="qemu+tls://10.0.0.2/system")]))
    after_spec = build(ClusterSpec, **{**before, "shared_pool": "p2", "labels": {"a": "9",
                                                                                "c": "3"}})
    after_spec = with_network(after_spec, name="blue", vlan=10)
    after = spec_doc(after_spec)
    after["hosts"] = [{"name": "h1", "uri": "qemu:///system", "labels": {}},
                      {"name": "h3", "uri": "qemu+tls://10.0.0.3/system", "labels": {}}]
    d = diff(before, after, ["cluster/state/ha", "templates/web"], {"cluster/state/ha"})
    got = {(c.what, c.name, c.action) for c in d.changes}
    assert got == {("host", "h3", "add"), ("host", "h2", "remove"), ("host", "h1", "change"),
                   ("network", "blue", "add"), ("pool", "p2", "change"),
                   ("label", "a", "change"), ("label", "b", "remove"), ("label", "c", "add")}
    assert d.changed_host_fields("h1") == ("uri",)
    assert (d.imports, d.kept) == (["templates/web"], ["cluster/state/ha"])
    assert diff(before, before).empty
    fresh = diff(None, after)
    assert {(c.what, c.action) for c in fresh.changes} == {("cluster", "add"),
                                                          ("host", "add"), ("network", "add")}


def test_host_files_must_be_the_controllers_own():
    roots = hostfiles.roots({hostfiles.ROOTS_ENV: "/srv/lab:relative"})
    assert roots == (*hostfiles.DEFAULT_ROOTS, "/srv/lab")  # relative roots are ignored
    ok = HostSpec(name="h1", uri="qemu+tls://10.0.0.1/system?pkipath=/etc/pki/ahvlite",
                  ssh=SshSpec(host="10.0.0.1", key=hostfiles.SSH_KEY,
                              known_hosts=hostfiles.KNOWN_HOSTS),
                  ovsdb=OvsdbSpec(remote="ssl:10.0.0.1:6640", ca_cert=hostfiles.OVSDB_CA,
                                  certificate=hostfiles.OVSDB_CERT,
                                  private_key="/srv/lab/key.pem"))
    hostfiles.check_host_files(ok, roots)
    assert [f for f, _ in hostfiles.named_files(ok)] == [
        "ssh.key", "ssh.known_hosts", "ovsdb.ca_cert", "ovsdb.certificate",
        "ovsdb.private_key", "uri pkipath"]
    for bad, field in [
        (ok.model_copy(update={"ssh": SshSpec(host="x", key="/root/.ssh/id_rsa")}), "ssh.key"),
        (ok.model_copy(update={"uri": "qemu+tls://10.0.0.1/system?pkipath=/home/me"}),
         "uri pkipath"),
        (ok.model_copy(update={"ssh": SshSpec(host="x", known_hosts="/etc/ahvlite2/k")}),
         "ssh.known_hosts"),
    ]:
        with pytest.raises(InvalidSpec) as exc:
            hostfiles.check_host_files(bad, roots, prefix="hosts[h1].")
        assert exc.value.field == f"hosts[h1].{field}"
        assert "/etc/ahvlite" in exc.value.allowed


def test_a_link_out_of_the_roots_counts_as_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "key").symlink_to("/etc/shadow")
    with pytest.raises(InvalidSpec):
        hostfiles.check_path("ssh.key", str(root / "key"), (str(root),))
    (root / "real").write_text("k")
    hostfiles.check_path("ssh.key", str(root / "real"), (str(root),))
    with pytest.raises(InvalidSpec):
        hostfiles.check_path("ssh.key", f"{root}/../root/real", (str(root),))


def test_a_field_named_model_is_validated_like_any_other():
    from pydantic import BaseModel, ConfigDict

    class WithModel(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str

    assert build(WithModel, model="Westmere").model == "Westmere"
    with pytest.raises(InvalidSpec) as exc:
        build(SshSpec, model="x", host="h")  # a stranger's field, named as such
    assert exc.value.field == "model"
