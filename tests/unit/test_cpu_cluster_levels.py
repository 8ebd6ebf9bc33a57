"""Cluster CPU levels over recorded host CPUs of machines that are not here, computed by
libvirt itself (``virConnectBaselineCPU`` and feature expansion from its CPU map on
``test:///default``), not by hand-written feature lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ahvlite.cluster.cpulevel import HostCpu, _check_one_vendor, decide_host_add
from ahvlite.cluster.cpustore import CpuLevel
from ahvlite.errors import AhvliteError, Conflict
from ahvlite.virt import cpu
from ahvlite.virt.conn import connection
from ahvlite.virt.cpu import CpuDef, HypervisorTarget

TARGET = HypervisorTarget(None, "x86_64", "q35", "kvm")


def host_cpu(model: str) -> CpuDef:
    """A host CPU as libvirt reports one: the model and vendor from libvirt's CPU map."""
    path = cpu.CPU_MAP_DIR / f"x86_{model}.xml"
    vendor = etree.parse(str(path)).find("model/vendor")
    assert vendor is not None, path
    return CpuDef(model=model, vendor=vendor.get("name"))


@pytest.fixture(scope="module")
def conn():
    with connection("test:///default") as c:
        yield c


def baseline(conn, *models: str) -> CpuDef:
    return cpu.baseline_from_cpu_map(conn, [host_cpu(m) for m in models])


def runs_on(conn, wanted: CpuDef, host_model: str) -> cpu.Comparison:
    return cpu.compare_features(cpu.features_from_cpu_map(conn, wanted),
                                cpu.features_from_cpu_map(conn, host_cpu(host_model)))


@pytest.mark.parametrize(("models", "expected"), [
    (("Haswell", "Icelake-Server"), "Haswell"),
    (("Skylake-Server", "Cascadelake-Server", "Icelake-Server"), "Skylake-Server"),
    (("EPYC-Rome", "EPYC-Milan"), "EPYC-Rome"),
])
def test_baseline_is_the_oldest_generation_and_every_host_runs_it(conn, models, expected):
    base = baseline(conn, *models)
    assert base.model == expected
    for m in models:
        assert runs_on(conn, base, m).compatible, m


def test_newer_hosts_give_up_their_newer_features(conn):
    base = baseline(conn, "Haswell", "Icelake-Server")
    ice = runs_on(conn, host_cpu("Icelake-Server"), "Haswell")
    assert not ice.compatible and "avx512f" in ice.missing
    lost = cpu.features_given_up(cpu.features_from_cpu_map(conn, host_cpu("Icelake-Server")),
                                 cpu.features_from_cpu_map(conn, base))
    assert set(ice.missing) <= set(lost)


def test_mixed_vendors_are_refused_naming_the_hosts(conn):
    cpus = [HostCpu("h1", TARGET, host_cpu("Haswell")),
            HostCpu("h2", TARGET, host_cpu("EPYC-Rome"))]
    with pytest.raises(Conflict) as exc:
        _check_one_vendor(cpus)
    msg = exc.value.message
    assert "h1: Intel" in msg and "h2: AMD" in msg and "impossible" in msg
    # libvirt agrees: there is no baseline across vendors.
    with pytest.raises(AhvliteError, match="vendors do not match"):
        baseline(conn, "Haswell", "EPYC-Rome")


def test_an_older_host_lowers_the_level_and_strict_refuses(conn):
    level = CpuLevel(baseline(conn, "Cascadelake-Server", "Icelake-Server"), "baseline", 0)
    assert level.cpu.model == "Cascadelake-Server"
    runs = runs_on(conn, level.cpu, "Haswell")
    lowered = baseline(conn, "Cascadelake-Server", "Icelake-Server", "Haswell")
    plan = decide_host_add("h3", level, runs, lowered, strict=False)
    assert (plan.action, plan.level) == ("lower", lowered)
    assert lowered.model == "Haswell" and "avx512f" in plan.missing
    with pytest.raises(Conflict) as exc:
        decide_host_add("h3", level, runs, lowered, strict=True)
    assert "h3" in exc.value.message and "avx512f" in exc.value.message
    assert "--strict" in exc.value.message


def test_a_newer_host_leaves_the_level_as_it_is(conn):
    level = CpuLevel(baseline(conn, "Haswell", "Skylake-Server"), "baseline", 0)
    runs = runs_on(conn, level.cpu, "Icelake-Server")
    assert runs.compatible
    plan = decide_host_add("h3", level, runs, None, strict=True)
    assert (plan.action, plan.level) == ("keep", level.cpu)
    assert decide_host_add("h3", None, None, None, strict=True).action == "none"


@pytest.mark.parametrize(("level", "runs", "lacks"), [
    ("x86-64-v2", "Nehalem", "Conroe"),
    # libvirt's Haswell and Broadwell models leave out f16c and abm (lzcnt), which real
    # Haswell hosts report as extra features; a model-only recorded CPU lacks them.
    ("x86-64-v3", "Skylake-Client", "Broadwell"),
    ("x86-64-v4", "Skylake-Server", "Haswell"),
    ("x86-64-v3", "EPYC-Rome", "Opteron_G3"),
])
def test_microarchitecture_levels_are_models_plus_features(conn, level, runs, lacks):
    wanted = cpu.microarch_level(level)
    assert wanted is not None and wanted.model == cpu.MICROARCH_BASE_MODEL
    assert runs_on(conn, wanted, runs).compatible
    missing = runs_on(conn, wanted, lacks)
    assert not missing.compatible
    base = cpu.features_from_cpu_map(conn, CpuDef(cpu.MICROARCH_BASE_MODEL))
    assert set(missing.missing) <= set(cpu.MICROARCH_LEVELS[level]) | base
    assert cpu.microarch_level("x86-64-v9") is None


def test_level_name_round_trips(tmp_path: Path):
    from ahvlite.cluster.cpustore import StateCpuLevelStore
    from tests.stores import sqlite_state

    store = StateCpuLevelStore(sqlite_state(tmp_path))
    v3 = cpu.microarch_level("x86-64-v3")
    assert v3 is not None
    store.save(CpuLevel(v3, "manual", 1.0, name="x86-64-v3"))
    back = store.load()
    assert back is not None and back.name == "x86-64-v3" and back.cpu == v3


def test_a_damaged_level_file_and_unknown_models_are_clear_errors(tmp_path: Path):
    from ahvlite.cluster.cpulevel import set_level
    from ahvlite.cluster.cpustore import StateCpuLevelStore
    from ahvlite.errors import InvalidSpec
    from ahvlite.spec.cluster import ClusterSpec
    from tests.stores import sqlite_state

    state = sqlite_state(tmp_path)
    store = StateCpuLevelStore(state)
    for text in (b"[]", b'{"features": 1}', b'{"model": "Westmere", "set_at": "soon"}'):
        state.store.put("cluster/state/cpu", text)
        with pytest.raises(InvalidSpec) as exc:
            store.load()
        assert exc.value.field in ("cluster CPU level", "cluster state cpu")
    state.store.delete("cluster/state/cpu")
    empty = ClusterSpec(name="x")
    with pytest.raises(InvalidSpec) as exc:
        set_level(empty, store, "Bogus")
    assert exc.value.field == "model" and exc.value.value == "Bogus"
    with pytest.raises(InvalidSpec) as exc:
        set_level(empty, store, "Westmere")
    assert exc.value.field == "hosts"
    assert store.load() is None  # nothing was stored
