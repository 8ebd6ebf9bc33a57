"""The convergence policy on job stats recorded from real lab migrations
(tests/data/jobstats/*.json: jobStats dicts polled from libvirt during the run)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ahvlite.cluster import migrate
from ahvlite.cluster.convergence import (
    ConvergenceSettings,
    Decision,
    decide,
    downtime_for,
    remaining_per_iteration,
    stalled,
)
from ahvlite.cluster.migrate import (
    MigrationAborted,
    MigrationProgress,
    migrate_vm,
    pinned_reason,
    vm_migration_lock,
)
from ahvlite.controller.kinds.vm import progress_line
from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationFailed
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt.migration import JobSample, MigrationOptions, flag_names, params_for, peer_uri
from ahvlite.virt.xml.domain import Domain
from tests.clirun import ahvlite
from tests.stores import in_store, sqlite_state

MIB = 1024 * 1024

DATA = Path(__file__).parent.parent / "data" / "jobstats"


def recording(name: str) -> list[JobSample]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    return [JobSample.from_stats(s) for s in doc["samples"]]


def replay(settings: ConvergenceSettings, samples: list[JobSample]) -> list[Decision]:
    """Feed the samples one by one, applying what the policy decides, like the loop in
    cluster/migrate.py; stops at the first abort."""
    downtime, postcopy, out = settings.first_downtime_ms, False, []
    for i in range(1, len(samples) + 1):
        d = decide(settings, samples[:i], downtime_ms=downtime, postcopy_started=postcopy)
        out.append(d)
        if d.abort_reason:
            break
        if d.downtime_ms is not None:
            downtime = d.downtime_ms
        elif d.postcopy:
            postcopy = True
    return out


def test_recordings_are_real_job_stats():
    for name in ("idle-converges", "dirty-no-converge", "dirty-postcopy"):
        samples = recording(name)
        assert len(samples) > 5
        assert all(s.raw["type"] == 2 for s in samples)  # VIR_DOMAIN_JOB_UNBOUNDED
        assert [s.elapsed_ms for s in samples] == sorted(s.elapsed_ms for s in samples)
        assert samples[-1].data_total_bytes == 151855104  # 128 MiB guest + device RAM


def test_idle_guest_converges_without_stalling_throttling_or_aborting():
    decisions = replay(ConvergenceSettings(), recording("idle-converges"))
    assert not any(d.abort_reason or d.postcopy or d.stalled for d in decisions)
    steps = [d.downtime_ms for d in decisions if d.downtime_ms is not None]
    assert steps == sorted(steps) and all(50 < s <= 300 for s in steps)


def test_dirtying_guest_aborts_at_the_iteration_cap_with_the_ahv_message():
    samples = recording("dirty-no-converge")
    decisions = replay(ConvergenceSettings(max_iterations=12), samples)
    last = decisions[-1]
    assert last.abort_reason is not None
    assert last.abort_reason.startswith("failed to converge after 12 iterations")
    # It gave up at the first poll of iteration 13, not before.
    at = samples[len(decisions) - 1]
    assert at.iteration == 13
    assert all(s.iteration <= 12 for s in samples[:len(decisions) - 1])


def test_smaller_cap_aborts_earlier_on_the_same_recording():
    samples = recording("dirty-no-converge")
    assert len(replay(ConvergenceSettings(max_iterations=4), samples)) < \
        len(replay(ConvergenceSettings(max_iterations=12), samples))


def test_dirtying_guest_is_seen_stalling_and_gets_the_full_stun_window():
    samples = recording("dirty-no-converge")
    settings = ConvergenceSettings(max_iterations=50, timeout_s=None)
    decisions = replay(settings, samples)
    assert not any(d.abort_reason for d in decisions)  # 50 is far off in this recording
    first_stall = next(i for i, d in enumerate(decisions) if d.stalled)
    assert decisions[first_stall].downtime_ms == 300  # straight to the cap when stuck
    assert samples[first_stall].iteration >= 2 + settings.stall_iterations
    assert max(s.throttle_pct for s in samples) > 0  # QEMU's auto-converge engaged


def test_with_postcopy_allowed_a_stalled_migration_switches_once_at_the_cap():
    samples = recording("dirty-no-converge")
    decisions = replay(ConvergenceSettings(postcopy=True, timeout_s=None), samples)
    switches = [i for i, d in enumerate(decisions) if d.postcopy]
    assert len(switches) == 1
    before = [d.downtime_ms for d in decisions[:switches[0]] if d.downtime_ms]
    assert before[-1] == 300
    assert not any(d.abort_reason for d in decisions)  # post-copy is never aborted


def test_the_postcopy_recording_switched_where_the_policy_says():
    doc = json.loads((DATA / "dirty-postcopy.json").read_text())
    samples = recording("dirty-postcopy")
    settings = ConvergenceSettings(**doc["settings"])
    decisions = replay(settings, samples)
    recorded_switch = next(i for i, s in enumerate(doc["samples"]) if s["ahvlite_postcopy"])
    assert next(i for i, d in enumerate(decisions) if d.postcopy) == recorded_switch
    assert doc["outcome"]["postcopy_used"] and doc["outcome"]["converged"]
    assert samples[-1].postcopy_requests > 0  # the destination pulled pages


def test_timeout_aborts_naming_iterations_and_seconds():
    samples = recording("dirty-no-converge")
    decisions = replay(ConvergenceSettings(timeout_s=20), samples)
    reason = decisions[-1].abort_reason
    assert reason is not None and "failed to converge after" in reason
    assert "timeout 20 s" in reason
    assert samples[len(decisions) - 1].elapsed_ms >= 20_000
    assert samples[len(decisions) - 2].elapsed_ms < 20_000


def test_nothing_is_decided_once_postcopy_runs():
    samples = recording("dirty-no-converge")
    settings = ConvergenceSettings(max_iterations=2, timeout_s=1)
    assert decide(settings, samples, downtime_ms=50, postcopy_started=True) == Decision()
    assert decide(settings, [], downtime_ms=50, postcopy_started=False) == Decision()


def test_downtime_steps_from_initial_to_the_cap():
    s = ConvergenceSettings(max_downtime_ms=300, initial_downtime_ms=50, downtime_steps=5,
                            iterations_per_step=2)
    assert [downtime_for(s, i) for i in range(1, 12)] == \
        [50, 50, 112, 112, 175, 175, 237, 237, 300, 300, 300]
    tiny = ConvergenceSettings(max_downtime_ms=10)  # initial above the cap: the cap
    assert {downtime_for(tiny, i) for i in range(1, 20)} == {10}
    assert downtime_for(replace(s, downtime_steps=1), 1) == 300


def test_stall_needs_finished_iterations_and_tolerates_progress():
    def sample(it: int, left: int) -> JobSample:
        return JobSample(elapsed_ms=it * 1000, iteration=it, data_remaining_bytes=left)
    s = ConvergenceSettings(stall_iterations=3, progress_min_pct=10)
    shrinking = [sample(i, 100 - 15 * i) for i in range(1, 7)]
    assert not stalled(s, shrinking)
    flat = [sample(i, 100) for i in range(1, 7)]
    assert stalled(s, flat)
    assert not stalled(s, flat[:5])  # iterations 2..4 finished: one short of the window
    assert remaining_per_iteration(flat)[3] == 100


@pytest.mark.parametrize(("field", "value"), [
    ("max_downtime_ms", 0), ("max_iterations", 0), ("timeout_s", -1),
    ("bandwidth_mib_s", 0), ("auto_converge_initial_pct", 100), ("max_downtime_ms", 10**6),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(InvalidSpec) as err:
        ConvergenceSettings(**{field: value})
    assert err.value.field == field and err.value.value == value


def test_start_flags_and_params_follow_the_options():
    o = MigrationOptions(bandwidth_mib_s=20, postcopy=True, auto_converge=True)
    assert flag_names(o) == {"LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE",
                             "POSTCOPY", "AUTO_CONVERGE", "TLS"}
    # libvirt's typed-parameter names (VIR_MIGRATE_PARAM_*), as libvirt spells them.
    p = params_for(o, "tcp://10.0.0.3")
    assert p["migrate_uri"] == "tcp://10.0.0.3"
    assert p["bandwidth"] == 20 and p["auto_converge.initial"] == 20
    assert flag_names(MigrationOptions(auto_converge=False)) == \
        {"LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "TLS"}
    assert {"TLS", "UNSAFE"} <= flag_names(MigrationOptions(same_kernel_storage=True))


def test_every_migration_ahvlite_starts_is_encrypted():
    # The CLI, maintenance, ADS and the vm.migrate task all start from these settings.
    for settings in (ConvergenceSettings(), ConvergenceSettings(postcopy=True,
                                                                 auto_converge=False)):
        for lab in (False, True):
            assert "TLS" in flag_names(settings.options(same_kernel_storage=lab))
    assert "tls" not in {f.name for f in dataclasses.fields(ConvergenceSettings)}


def test_peer_uri_drops_only_the_clients_pki_path():
    assert peer_uri("qemu+tls://10.0.0.2/system?pkipath=/x/y") == "qemu+tls://10.0.0.2/system"
    assert peer_uri("qemu+ssh://root@h/system?keyfile=/k&pkipath=/p") == \
        "qemu+ssh://root@h/system?keyfile=/k"


def test_pinned_reasons():
    xml = ("<domain><devices><hostdev mode='subsystem' type='pci'><source>"
           "<address domain='0x0000' bus='0x3c' slot='0x00' function='0x0'/></source>"
           "</hostdev></devices></domain>")
    assert "0000:3c:00.0" in (pinned_reason({}, Domain.parse(xml)) or "")
    assert "ahvlite.io/pinned" in (pinned_reason({"ahvlite.io/pinned": "true"},
                                                 Domain.parse("<domain/>")) or "")
    assert pinned_reason({"ahvlite.io/pinned": "no"},
                         Domain.parse("<domain><devices/></domain>")) is None


def test_a_second_migration_of_the_same_vm_is_a_conflict(tmp_path):
    cluster = in_store(ClusterSpec(name="c"), tmp_path)
    other = sqlite_state(tmp_path).spec()  # another process's view of the cluster
    with vm_migration_lock(cluster, "vm1"):
        with pytest.raises(Conflict, match="already being migrated"), \
                vm_migration_lock(other, "vm1"):
            pass
        with vm_migration_lock(other, "vm2"):  # another VM is fine
            pass
    with vm_migration_lock(other, "vm1"):  # released
        pass


def test_pinned_reason_reads_addresses_written_without_padding():
    xml = ("<domain><devices><hostdev mode='subsystem' type='pci'><source>"
           "<address domain='0' bus='0x3' slot='0x1f' function='0x2'/></source>"
           "</hostdev><hostdev mode='subsystem' type='usb'/></devices></domain>")
    assert "0000:03:1f.2" in (pinned_reason({}, Domain.parse(xml)) or "")


def test_a_bad_vm_name_is_invalid_and_takes_no_lock(tmp_path):
    cluster = in_store(ClusterSpec(name="c", hosts=[HostSpec(name=n, uri="test:///default")
                                                    for n in ("h1", "h2")]), tmp_path)
    with pytest.raises(InvalidSpec) as err:
        migrate_vm(cluster, "a/b")
    assert err.value.field == "name" and err.value.value == "a/b"
    with pytest.raises(NotFound):
        migrate_vm(cluster, "no-such-vm")
    assert cluster.state.store.children("locks") == {}


class FakeJob:
    """Our MigrationJob's interface over a worker thread that ends only some time after
    abort() (like migrateToURI3 unwinding), or by itself after ``give_up_s``."""

    def __init__(self, *, samples: bool, unwind_s: float = 0.5, give_up_s: float = 10):
        self.samples, self.unwind_s, self.give_up_s = samples, unwind_s, give_up_s
        self.aborted = threading.Event()
        self.postcopy_started = False
        self.options = MigrationOptions()
        self.error: OperationFailed | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = 0.0

    def _run(self):
        if self.aborted.wait(self.give_up_s):
            time.sleep(self.unwind_s)
            self.error = OperationFailed("operation aborted: migration job: canceled")
        else:
            self.error = OperationFailed("never aborted")

    def start(self):
        self.t0 = time.monotonic()
        self.thread.start()

    def wait(self, timeout_s):
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    @property
    def done(self):
        return not self.thread.is_alive()

    def sample(self):
        if not self.samples:
            return None
        return JobSample(elapsed_ms=int((time.monotonic() - self.t0) * 1000), iteration=1,
                         data_total_bytes=100, data_remaining_bytes=50)

    def abort(self):
        self.aborted.set()
        return True

    def set_max_downtime(self, _ms):
        return True


def _vm():
    return migrate._Vm(name="v1", host="h1", dom=None, info=None,
                       config=Domain.parse("<domain/>"))


def test_an_interrupted_migration_waits_for_the_aborted_job_to_end():
    job = FakeJob(samples=True)

    def failing(_progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate._run(job, ConvergenceSettings(poll_interval_s=0.05), None, _vm(), "h2", {},
                     failing)
    assert job.aborted.is_set()
    assert job.done  # the worker left before the caller could close the connection


def test_timeout_holds_even_when_libvirt_reports_no_job_stats():
    job = FakeJob(samples=False, unwind_s=0)
    with pytest.raises(MigrationAborted) as err:
        migrate._run(job, ConvergenceSettings(timeout_s=0.3, poll_interval_s=0.05), None,
                     _vm(), "h2", {}, None)
    reason = err.value.result.reason
    assert "timed out" in reason and "timeout 0.3 s" in reason
    assert err.value.result.aborted and not err.value.result.converged


@pytest.mark.parametrize(("args", "option", "field"), [
    (["--max-downtime-ms", "-5"], "--max-downtime-ms", "max_downtime_ms"),
    (["--bandwidth-mib", "0"], "--bandwidth-mib", "bandwidth_mib_s"),
])
def test_cli_errors_name_the_option(tmp_path, args, option, field):
    # Checked before anything is sent: no client config needed for the error.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")},
           "HOME": str(tmp_path), "COLUMNS": "200"}
    r = ahvlite("vm", "migrate", "v1", *args, env=env, timeout_s=60)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"{option}=" in out and f"{field}=" not in out and "Traceback" not in out


def test_progress_line_says_what_is_left_the_dirty_rate_iteration_and_pause():
    p = MigrationProgress(vm="v1", source="h1", destination="h2", elapsed_s=3.0,
                          iteration=4, data_total_bytes=400 * MIB,
                          data_remaining_bytes=100 * MIB, dirty_rate_bytes_s=8 * MIB,
                          transfer_rate_bytes_s=100 * MIB, expected_downtime_ms=120,
                          max_downtime_ms=300, throttle_pct=20, stalled=False,
                          postcopy=False)
    pct, line = progress_line(p)
    assert pct == 75
    assert line == ("v1 h1→h2: iter 4, left 100.0 MiB, dirty 8.0 MiB/s, "
                    "downtime ~120/300 ms (throttle 20%)")
    unknown = MigrationProgress(vm="v1", source="h1", destination="h2", elapsed_s=0,
                                iteration=0, data_total_bytes=None, data_remaining_bytes=None,
                                dirty_rate_bytes_s=None, transfer_rate_bytes_s=None,
                                expected_downtime_ms=None, max_downtime_ms=50,
                                throttle_pct=0, stalled=True, postcopy=True)
    assert progress_line(unknown) == (
        1, "v1 h1→h2: iter 0, left ? MiB, dirty ? MiB/s, downtime ~?/50 ms "
           "(stalled, post-copy)")
