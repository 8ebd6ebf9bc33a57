"""`ahvlite cluster apply -f` and `cluster export` against a real controller's API
(tests/apicluster.py): idempotent, a dry run that changes nothing, the documents of an
earlier cluster directory imported only where the store has none, bad files refused
with nothing written, compare-and-set when two applies race, export round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ahvlite.cluster.specwrite import document_keys
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.apicluster import api_cluster

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="capply", shared_pool="default-pool",
                   hosts=[HostSpec(name="h1", uri="test:///default")])
LEVEL = {"model": "Westmere", "vendor": "Intel", "features": [], "disabled": [],
         "source": "manual", "set_at": 0, "name": "Westmere"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_cluster(tmp_path_factory.mktemp("capply"), SPEC) as c:
        yield c


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def stored(api) -> dict:
    return json.loads(api.coord.get("cluster/spec").value)


def snapshot(api) -> tuple[int | None, set[str]]:
    return api.state.spec_version(), document_keys(api.coord)


def exported(api, path: Path, **changes) -> Path:
    ok(api.cli("cluster", "export", "-o", str(path)))
    if changes:
        doc = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**doc, **changes}, sort_keys=False))
    return path


def test_export_round_trips_and_applying_twice_changes_nothing(api, tmp_path):
    path = exported(api, tmp_path / "cluster.yaml")
    assert yaml.safe_load(path.read_text()) == stored(api)
    assert ClusterSpec.model_validate(yaml.safe_load(ok(api.cli("cluster", "export")).stdout)
                                      ).model_dump(mode="json", exclude_none=True) == stored(api)
    assert json.loads(ok(api.cli("cluster", "export", "--json")).stdout) == stored(api)
    before = snapshot(api)
    same = ok(api.cli("cluster", "apply", "-f", str(path)))
    assert "spec unchanged" in same.stdout and "spec: no changes" in same.stdout
    assert snapshot(api) == before
    # A change: the dry run shows it and changes nothing ...
    path = exported(api, tmp_path / "labelled.yaml", labels={"site": "a"})
    dry = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--dry-run",
                                "--json")).stdout)
    assert dry["dry_run"] is True
    assert dry["changes"] == [{"what": "label", "name": "site", "action": "add", "fields": []}]
    human = ok(api.cli("cluster", "apply", "-f", str(path), "--dry-run"))
    assert "dry run, nothing changed" in human.stdout and "add    label site" in human.stdout
    assert snapshot(api) == before
    # ... applying it writes once, and again changes nothing.
    done = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--json")).stdout)
    assert done["spec_written"] is True and stored(api)["labels"] == {"site": "a"}
    version = api.state.spec_version()
    assert version == before[0] + 1
    again = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--json")).stdout)
    assert again["spec_written"] is False and again["diff"]["changes"] == []
    assert api.state.spec_version() == version
    assert yaml.safe_load(ok(api.cli("cluster", "export")).stdout)["labels"] == {"site": "a"}


def test_documents_beside_an_old_cluster_file_are_imported_only_where_missing(api, tmp_path):
    api.state.put("ha", {"mode": "guarantee", "rf": 2})  # the store's own, newer
    d = tmp_path / "old"
    d.mkdir()
    path = exported(api, d / "cluster.yaml")
    (d / "cluster-state").mkdir()
    (d / "cluster-state" / "ha.json").write_text(json.dumps({"mode": "default"}))
    (d / "cluster-state" / "maintenance.json").write_text(json.dumps({"hosts": {}}))
    (d / "cluster-cpu.json").write_text(json.dumps(LEVEL))
    (d / "templates").mkdir()
    (d / "templates" / "web.json").write_text(json.dumps({"name": "web", "versions": []}))
    before = snapshot(api)
    dry = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--dry-run",
                                "--json")).stdout)
    assert dry["imports"] == ["cluster/state/cpu", "cluster/state/maintenance",
                              "templates/web"]
    assert dry["kept"] == ["cluster/state/ha"] and dry["changes"] == []
    assert snapshot(api) == before
    out = ok(api.cli("cluster", "apply", "-f", str(path)))
    assert ("  imported (the store did not have them): cluster/state/cpu, "
            "cluster/state/maintenance, templates/web\n") in out.stdout
    assert "  kept as the store holds them (never overwritten): cluster/state/ha\n" in out.stdout
    assert api.state.get("ha") == {"mode": "guarantee", "rf": 2}
    assert api.state.get("cpu") == LEVEL and api.state.get("maintenance") == {"hosts": {}}
    assert api.state.doc("templates", "web") == {"name": "web", "versions": []}
    assert api.state.spec_version() == before[0]  # the spec itself was already so
    again = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--json")).stdout)
    assert again["imported"] == [] and len(again["kept"]) == 4
    # An undecodable document beside the file: refused here, nothing sent.
    (d / "templates" / "bad.json").write_text("{not json")
    r = api.cli("cluster", "apply", "-f", str(path))
    assert r.returncode == 2 and "templates/bad" in r.stderr and "Traceback" not in r.stderr
    assert api.state.doc("templates", "bad") is None


@pytest.mark.parametrize(("edit", "code", "needle"), [
    (lambda d: {**d, "hostz": []}, 2, "hostz"),
    (lambda d: {**d, "hosts": [{"name": "h1", "uri": "qemu+tcp://127.0.0.1/system"}]}, 2,
     "host.uri"),
    (lambda d: {**d, "network": {"networks": [{"name": "a", "vlan": 5000}]}}, 2, "vlan"),
    (lambda d: {**d, "hosts": [{**d["hosts"][0], "ssh": {"host": "127.0.0.1",
                                                         "key": "/root/.ssh/id_rsa"}}]},
     2, "hosts[h1].ssh.key"),
    (lambda d: {**d, "name": "other"}, 4, "the store holds cluster 'capply'"),
    (lambda d: {**d, "hosts": []}, 4, "1 VMs run on h1: test"),
    (lambda d: {**d, "hosts": [*d["hosts"], {"name": "h2",
                                             "uri": "qemu+tls://127.0.0.1:1/system"}]},
     6, "127.0.0.1"),
])
def test_a_bad_or_refused_file_is_one_clear_error_and_writes_nothing(api, tmp_path, edit,
                                                                      code, needle):
    d = tmp_path / "bad"
    d.mkdir()
    path = exported(api, d / "cluster.yaml")
    path.write_text(yaml.safe_dump(edit(yaml.safe_load(path.read_text()))))
    (d / "templates").mkdir()
    (d / "templates" / "never.json").write_text("{}")
    before = snapshot(api), stored(api)
    r = api.cli("cluster", "apply", "-f", str(path))
    assert r.returncode == code, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stdout + r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    assert (snapshot(api), stored(api)) == before


def test_hosts_added_and_removed_through_apply_get_the_host_checks(api, tmp_path):
    keep = exported(api, tmp_path / "keep.yaml")
    ok(api.cli("host", "remove", "h1", "--force"))
    assert stored(api)["hosts"] == []
    dry = json.loads(ok(api.cli("cluster", "apply", "-f", str(keep), "--dry-run",
                                "--json")).stdout)
    assert dry["changes"] == [{"what": "host", "name": "h1", "action": "add", "fields": []}]
    # With a CPU level stored, a new host's CPU is checked against it, as by `host add`
    # (the test driver cannot tell: refused, nothing written).
    api.state.put("cpu", LEVEL)
    version = api.state.spec_version()
    r = api.cli("cluster", "apply", "-f", str(keep))
    assert r.returncode == 7 and "virConnectGetDomainCapabilities" in r.stderr, r.stderr
    assert api.state.spec_version() == version and stored(api)["hosts"] == []
    api.coord.delete("cluster/state/cpu")
    out = ok(api.cli("cluster", "apply", "-f", str(keep)))
    assert "add    host h1" in out.stdout
    assert [h["name"] for h in stored(api)["hosts"]] == ["h1"]
    # A host whose URI changes is checked again before anything is written.
    moved = tmp_path / "moved.yaml"
    doc = yaml.safe_load(keep.read_text())
    doc["hosts"][0]["uri"] = "qemu+tls://127.0.0.1:1/system"
    moved.write_text(yaml.safe_dump(doc))
    version = api.state.spec_version()
    r = api.cli("cluster", "apply", "-f", str(moved))
    assert r.returncode == 6 and "127.0.0.1" in r.stderr, r.stderr
    assert api.state.spec_version() == version


def test_two_applies_at_once_never_mix_or_lose_a_change(api, tmp_path):
    files = [exported(api, tmp_path / f"{s}.yaml", labels={"site": s}) for s in ("x", "y")]
    wanted = [yaml.safe_load(f.read_text()) for f in files]
    version = api.state.spec_version()
    procs = [subprocess.Popen([sys.executable, "-m", "ahvlite.cli.main", "cluster", "apply",
                               "-f", str(f), "--json"], env=api.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for f in files]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 4} and 0 in codes, outs
    for code, (out, err) in zip(codes, outs, strict=True):
        if code == 4:  # planned on a spec the other one changed meanwhile (--json: stdout)
            assert "changed since this apply was planned" in out + err, out + err
    final = stored(api)
    assert final in wanted  # exactly one of the documents, never a mix
    assert api.state.spec_version() == version + codes.count(0)


def test_apply_to_a_store_without_a_cluster_writes_it(tmp_path):
    with api_cluster(tmp_path / "ctl", SPEC) as api:
        path = exported(api, tmp_path / "cluster.yaml", labels={"new": "yes"})
        (tmp_path / "cluster-state").mkdir()
        (tmp_path / "cluster-state" / "maintenance.json").write_text('{"hosts": {}}')
        (tmp_path / "cluster-cpu.json").write_text(json.dumps(LEVEL))
        api.coord.delete("cluster/spec")  # as a fresh store holds it
        # Every host is new; the level being imported is what they are checked against
        # (the test driver cannot tell: refused, nothing written).
        r = api.cli("cluster", "apply", "-f", str(path))
        assert r.returncode == 7 and "virConnectGetDomainCapabilities" in r.stderr, r.stderr
        assert api.coord.get("cluster/spec") is None and document_keys(api.coord) == set()
        (tmp_path / "cluster-cpu.json").unlink()
        done = json.loads(ok(api.cli("cluster", "apply", "-f", str(path), "--json")).stdout)
        assert done["spec_written"] is True
        assert done["imported"] == ["cluster/state/maintenance"]
        assert stored(api) == yaml.safe_load(path.read_text())
        assert api.state.spec_version() == 0 and api.state.get("maintenance") == {"hosts": {}}
