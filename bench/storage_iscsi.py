"""The iSCSI path on a 2-host lab (name ``bisc``, storage iscsi, TCG guests).

* Failover: a guest on h1 writes all the time (the lab's pattern writer, O_DIRECT);
  h1's target is killed: the guest-visible I/O pause (longest time without a write
  reaching the volume, read from the file every 5 ms) and, once the target is started
  again, the time until both disk sessions are back on h1 (h1's own tgtd session list)
  and the pause that failback causes. Five runs: p50 and max.
* Throughput: sequential 1 MiB and random 4 KiB, read and write, queue depth 1,
  O_DIRECT, in the guest (``bench/rio.c``, built here), on its data disk through the
  iSCSI path; then the SAME volume file as a plain file disk of a second VM, same run;
  two rounds, best of each. The ratio iSCSI / file is the figure (TCG guests: absolute
  numbers mean little).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ahvlite.cluster import vms
from ahvlite.lab import guests, iodrill, lab, namespaces
from ahvlite.spec.cluster import ClusterSpec, load_cluster
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.vm import DiskSpec
from ahvlite.storage.tgt import parse_show

NAME = "bisc"
SUBNET = "10.213.236.0/26"
RUNS = 5
DATA_MIB = 64
TOOL_OFFSET_MIB = DATA_MIB - 4  # rio's binary sits in the data disk's last 4 MiB
SPAN_MIB = 48
SECONDS = 6
WORKLOADS = (("seqread", 1 << 20), ("seqwrite", 1 << 20), ("randread", 4096),
             ("randwrite", 4096))


def build_rio(out: Path) -> Path:
    src = Path(__file__).with_name("rio.c")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True)
    return out


def boot(status: dict[str, Any], cluster: ClusterSpec, name: str, host: str, index: int,
         data: DiskSpec) -> vms.VmInfo:
    spec = guests.vm_spec(name, status["guest_addresses"][index])
    spec = spec.model_copy(update={"disks": [*spec.disks, data]})
    info = vms.create_vm(cluster, spec, host=host, start=True)
    wait_ready(name, host)
    return info


def wait_ready(name: str, host: str) -> None:
    log = lab.layout_of(NAME).host(host).state_dir / guests.serial_log_path(name).lstrip("/")
    deadline = time.monotonic() + 300
    while not (log.exists() and "AHVLITE-GUEST-READY" in log.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not boot")
        time.sleep(0.5)


def restart(cluster: ClusterSpec, name: str, tool_size: int) -> str:
    vms.start_vm(cluster, name)
    wait_ready(name, "h1")
    return load_rio(cluster, name, tool_size)


def best(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: max(a[k], b[k]) for k in a}


def sessions_on(layout: Any, host: str, vm_uuid: str) -> int:
    h = layout.host(host)
    out = namespaces.run([*namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file),
                          "tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"],
                         check=False, timeout_s=10).stdout
    return sum(1 for t in parse_show(out) for s in t.sessions if s.initiator.endswith(vm_uuid))


def failover_runs(cluster: ClusterSpec, layout: Any, info: vms.VmInfo,
                  data: Path) -> list[dict[str, float]]:
    runs = []
    with iodrill.Heartbeat(data) as beat:
        iodrill.start_writer(cluster, info.name, data_dev(cluster, info.name), 256)
        time.sleep(3)
        for _ in range(RUNS):
            killed = time.monotonic()
            lab.stop_daemon(NAME, "h1", "storage")
            time.sleep(3)
            pause = beat.pause_after(killed, 3)
            started = time.monotonic()
            lab.start_daemon(NAME, "h1", "storage")
            while sessions_on(layout, "h1", info.uuid) < 2:
                if time.monotonic() - started > 60:
                    raise TimeoutError("no failback in 60 s")
                time.sleep(0.05)
            back = time.monotonic() - started
            # libiscsi waits at least 3 s after a successful reconnect before the next
            # one: the next failure is staged after that, as one would come on its own.
            time.sleep(4)
            runs.append({"pause_ms": pause * 1000, "failback_s": back,
                         "failback_pause_ms": beat.pause_after(started, back + 2) * 1000,
                         "typical_beat_ms": beat.typical_gap(killed - 3, killed) * 1000})
        progress = iodrill.stop_writer(cluster, info.name)
    bad = iodrill.verify_volume(data, progress, 256)
    if progress.errors or bad:
        raise RuntimeError(f"writes lost: errors {progress.errors}, bad blocks {bad[:10]}")
    return runs


def data_dev(cluster: ClusterSpec, vm: str) -> str:
    return iodrill.disk_device(cluster, vm, "data", 1)


def load_rio(cluster: ClusterSpec, vm: str, size: int) -> str:
    """Copy rio out of the data disk into the guest's /tmp; returns the disk's name."""
    dev = data_dev(cluster, vm)
    skip = TOOL_OFFSET_MIB * 256  # 4 KiB blocks
    count = (size + 4095) // 4096
    _, out = vms.console_run(cluster, vm, f"dd if={dev} bs=4096 skip={skip} count={count} "
                                f"2>/dev/null | head -c {size} > /tmp/rio && chmod +x /tmp/rio"
                                " && /tmp/rio 2>&1 | head -1", timeout_s=60)
    if "usage" not in out:
        raise RuntimeError(f"{vm}: rio did not load: {out[-300:]}")
    return dev


def workloads(cluster: ClusterSpec, vm: str, dev: str) -> dict[str, float]:
    out = {}
    for mode, block in WORKLOADS:
        _, text = vms.console_run(cluster, vm, f"/tmp/rio {dev} {mode} {block} {SECONDS} "
                                  f"{SPAN_MIB << 20}", timeout_s=SECONDS * 4 + 30)
        m = re.search(r"ops=(\d+) bytes=(\d+) secs=([\d.]+) errors=(\d+)", text)
        if not m or m.group(4) != "0":
            raise RuntimeError(f"{vm} {mode}: {text[-300:]}")
        ops, nbytes, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
        out[mode] = round(nbytes / secs / (1 << 20), 2) if block > 4096 \
            else round(ops / secs, 1)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET, storage="iscsi"))
    try:
        layout = lab.layout_of(NAME)
        cluster = load_cluster(Path(status["cluster_file"]))
        vms.import_image(cluster, Path(status["guest"]["disk"]), "guest")
        info = boot(status, cluster, "bi", "h1", 0, DiskSpec(name="data", size_mib=DATA_MIB))
        volume = next(d["volume"] for d in info.disks if d["name"] == "data")
        data = layout.shared_dir / volume
        runs = failover_runs(cluster, layout, info, data)

        with tempfile.TemporaryDirectory() as tmp:
            rio = build_rio(Path(tmp) / "rio")
            blob = rio.read_bytes()
        with open(data, "r+b") as f:
            f.seek(TOOL_OFFSET_MIB << 20)
            f.write(blob)
        via_iscsi = workloads(cluster, "bi", load_rio(cluster, "bi", len(blob)))
        vms.stop_vm(cluster, "bi", force=True)
        # The same volume as a file disk: a cluster that opens files (storage: dir).
        as_files = cluster.model_copy(update={"storage": "dir"})
        boot(status, as_files, "bf", "h1", 1, DiskSpec(name="data", volume=volume))
        via_file = workloads(as_files, "bf", load_rio(as_files, "bf", len(blob)))
        # A second round, in the other order, keeps the best of each: the machine is
        # shared, and a busy neighbour must not decide the ratio.
        vms.stop_vm(as_files, "bf", force=True)
        dev = restart(cluster, "bi", len(blob))
        via_iscsi = best(via_iscsi, workloads(cluster, "bi", dev))
        vms.stop_vm(cluster, "bi", force=True)
        dev = restart(as_files, "bf", len(blob))
        via_file = best(via_file, workloads(as_files, "bf", dev))
    finally:
        lab.down(NAME)

    pauses = [r["pause_ms"] for r in runs]
    backs = [r["failback_s"] for r in runs]
    fb_pauses = [r["failback_pause_ms"] for r in runs]
    result = {
        "failover_pause_ms": {"p50": round(statistics.median(pauses)), "max": round(max(pauses)),
                              "runs": [round(p) for p in pauses]},
        "failback_s": {"p50": round(statistics.median(backs), 2), "max": round(max(backs), 2)},
        "failback_pause_ms": {"p50": round(statistics.median(fb_pauses)),
                              "max": round(max(fb_pauses))},
        "typical_write_gap_ms": round(statistics.median(r["typical_beat_ms"] for r in runs)),
        "throughput": {mode: {"iscsi": via_iscsi[mode], "file": via_file[mode],
                              "ratio": round(via_iscsi[mode] / via_file[mode], 2)}
                       for mode, _ in WORKLOADS},
        "units": {"seq*": "MiB/s", "rand*": "IOPS (4 KiB, queue depth 1)"},
    }
    print("storage_iscsi:", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
