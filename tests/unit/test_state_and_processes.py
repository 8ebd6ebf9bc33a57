"""The state file and PID-safe process ending."""

from __future__ import annotations

import subprocess
import sys
import time

from ahvlite.lab import processes
from ahvlite.lab.state import LabState, ProcessRecord


def test_state_round_trips_and_a_truncated_file_reads_as_absent(tmp_path):
    path = tmp_path / "state.json"
    state = LabState(name="x", subnet="10.0.0.0/24", hosts=2)
    state.netns.append("ahvl-x-h1")
    state.processes.append(ProcessRecord(host="h1", role="libvirtd", pid=42, starttime=7))
    state.save(path)
    again = LabState.load(path)
    assert again == state
    path.write_text(path.read_text()[:20])
    assert LabState.load(path) is None


def test_stop_ends_a_recorded_process(tmp_path):
    rec = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"],
                          log=tmp_path / "log", host="h1", role="sleeper")
    assert processes.is_alive(rec)
    processes.stop([rec], grace_s=5)
    assert not processes.is_alive(rec)


def test_stop_spares_a_pid_whose_start_time_differs(tmp_path):
    # Same PID, other start time: a reused PID that belongs to someone else.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real = processes.starttime(proc.pid)
        assert real is not None
        impostor = ProcessRecord(host="", role="x", pid=proc.pid, starttime=real + 1)
        processes.stop([impostor], grace_s=0.2)
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_ignored_means_sigkill_after_grace(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    rec = processes.spawn([sys.executable, "-c", code], log=tmp_path / "log", host="", role="x")
    time.sleep(0.3)  # let it install the handler
    t0 = time.monotonic()
    processes.stop([rec], grace_s=0.5)
    assert not processes.is_alive(rec)
    assert time.monotonic() - t0 >= 0.5
