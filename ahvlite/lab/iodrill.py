"""A guest that writes a checkable pattern to a disk, for storage drills and benches.

The lab guest (busybox) runs a writer on its serial console: data blocks 1..N of the
disk get ``AHVLITE-PATTERN r=ROUND i=INDEX`` (zero-padded to 4 KiB) round after round,
each write with O_DIRECT; after each data block, block 0 gets a heartbeat with a
sequence number. Any failed write is remembered in the guest.

From outside: the heartbeat, read from the volume file every few milliseconds, shows
when guest I/O pauses and for how long (``Heartbeat``); once the writer has stopped,
:func:`verify_volume` checks every block against what the guest says it wrote last,
and :func:`guest_readback` has the guest read the blocks back through its disk.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ahvlite.clock import wait_until
from ahvlite.cluster import vms
from ahvlite.errors import OperationFailed, OperationTimeout
from ahvlite.spec.cluster import ClusterSpec

BLOCK = 4096

WRITER = r"""
[ -s /tmp/io-pid ] && kill $(cat /tmp/io-pid) 2>/dev/null
rm -f /tmp/io-stop /tmp/io-err /tmp/io-done; echo '{first} -1 0' > /tmp/io-progress
( seq=0; r={first}
  while [ ! -e /tmp/io-stop ]; do
    i=0
    while [ $i -lt {blocks} ] && [ ! -e /tmp/io-stop ]; do
      seq=$((seq+1))
      printf 'AHVLITE-PATTERN r=%06d i=%06d\n' $r $i | dd of={dev} bs=4096 seek=$((i+1)) \
        conv=sync,notrunc oflag=direct 2>/dev/null || echo "data $r $i" >> /tmp/io-err
      printf 'AHVLITE-BEAT seq=%010d\n' $seq | dd of={dev} bs=4096 seek=0 \
        conv=sync,notrunc oflag=direct 2>/dev/null || echo "beat $seq" >> /tmp/io-err
      echo "$r $i $seq" > /tmp/io-progress
      i=$((i+1))
    done
    r=$((r+1))
  done
  : > /tmp/io-done ) > /dev/null 2>&1 &
echo $! > /tmp/io-pid
echo started
"""

_BEAT = re.compile(rb"AHVLITE-BEAT seq=(\d{10})")


def disk_device(cluster: ClusterSpec, vm: str, serial: str, unit: int) -> str:
    """The guest's /dev name of the disk with ``serial`` (the designer sets a disk's
    name as its serial). sda, sdb ... follow the order the kernel finishes probing,
    not the order of the disks: never assume them. Falls back to the disk's SCSI unit
    (the designer's order) when the serial page is not there."""
    _, out = vms.console_run(
        cluster, vm, f"for d in /sys/block/sd*; do grep -qs '{serial}' $d/device/vpd_pg80 "
        "&& echo DEV=/dev/${d##*/}; done; for d in /sys/bus/scsi/devices/*:*:*:"
        f"{unit}/block/*; do echo UNIT=/dev/${{d##*/}}; done", timeout_s=30)
    by_serial = re.findall(r"DEV=(/dev/sd[a-z]+)", out)
    by_unit = re.findall(r"UNIT=(/dev/sd[a-z]+)", out)
    found = by_serial if len(by_serial) == 1 else by_unit
    if len(found) != 1:
        raise OperationFailed(f"{vm}: cannot tell which disk is {serial!r}: {out[-300:]}")
    return found[0]


def pattern_block(round_: int, index: int) -> bytes:
    line = f"AHVLITE-PATTERN r={round_:06d} i={index:06d}\n".encode()
    return line + b"\0" * (BLOCK - len(line))


@dataclass(frozen=True)
class Progress:
    round: int  # the round of the last write
    index: int  # the data block index written last (0-based; -1: none yet)
    seq: int  # writes so far
    errors: list[str]
    first_round: int = 1  # the round this run started with


def start_writer(cluster: ClusterSpec, vm: str, dev: str, blocks: int, *,
                 first_round: int = 1) -> None:
    """Start the writer; ``first_round`` above any round already on the disk makes
    every block this run writes tell itself apart from older ones."""
    script = (WRITER.replace("{dev}", dev).replace("{blocks}", str(blocks))
              .replace("{first}", str(first_round)).strip() + "\n")
    # A long line overruns the emulated UART (characters get lost): short pieces.
    encoded = base64.b64encode(script.encode()).decode()
    vms.console_run(cluster, vm, ": > /tmp/io-writer.b64", timeout_s=30)
    for at in range(0, len(encoded), 160):
        vms.console_run(cluster, vm, f"echo {encoded[at:at + 160]} >> /tmp/io-writer.b64",
                        timeout_s=30)
    code, out = vms.console_run(
        cluster, vm, "base64 -d /tmp/io-writer.b64 > /tmp/io-writer.sh && "
        "sh /tmp/io-writer.sh", timeout_s=60)
    if code != 0 or "started" not in out:
        raise OperationFailed(f"{vm}: the writer did not start ({code}): {out[-300:]}")


def stop_writer(cluster: ClusterSpec, vm: str, timeout_s: float = 60, *,
                first_round: int = 1) -> Progress:
    vms.console_run(cluster, vm, ": > /tmp/io-stop", timeout_s=30)
    if not wait_until(lambda: vms.console_run(cluster, vm, "test -e /tmp/io-done",
                                              timeout_s=30)[0] == 0,
                      timeout_s=timeout_s, interval_s=0.5):
        raise OperationTimeout(f"{vm}: the writer did not stop in {timeout_s:g} s")
    _, out = vms.console_run(cluster, vm, "cat /tmp/io-progress; cat /tmp/io-err 2>/dev/null",
                             timeout_s=30)
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    r, i, seq = (int(x) for x in lines[0].split())
    return Progress(round=r, index=i, seq=seq, errors=lines[1:], first_round=first_round)


def expected_blocks(p: Progress, blocks: int) -> dict[int, bytes]:
    """Data block index -> what it must hold after the writer stopped at ``p`` (the
    blocks this run wrote; in its first round, the ones after the last are older)."""
    out = {}
    for i in range(blocks):
        if i <= p.index:
            out[i] = pattern_block(p.round, i)
        elif p.round > p.first_round:
            out[i] = pattern_block(p.round - 1, i)
    return out


def _read(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        # The targets write with O_DIRECT; drop any page cache we may hold ourselves.
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def verify_volume(path: Path, p: Progress, blocks: int) -> list[int]:
    """Data block indexes whose bytes in the volume file are not what was written."""
    data = _read(path, BLOCK, blocks * BLOCK)
    want = expected_blocks(p, blocks)
    return [i for i, b in sorted(want.items()) if data[i * BLOCK:(i + 1) * BLOCK] != b]


def guest_readback(cluster: ClusterSpec, vm: str, dev: str, p: Progress,
                   blocks: int) -> tuple[bool, str]:
    """The guest reads back, through its disk, the blocks this run wrote (a whole round,
    or the first ``index + 1`` blocks): (md5 matches, its md5)."""
    want_blocks = expected_blocks(p, blocks)
    count = len(want_blocks)
    assert sorted(want_blocks) == list(range(count))
    want = hashlib.md5(b"".join(want_blocks[i] for i in range(count))).hexdigest()
    _, out = vms.console_run(
        cluster, vm, f"dd if={dev} bs=4096 skip=1 count={count} iflag=direct 2>/dev/null"
        " | md5sum", timeout_s=60)
    got = next((w for w in out.split() if re.fullmatch(r"[0-9a-f]{32}", w)), "")
    return got == want, got


def guest_io_errors(cluster: ClusterSpec, vm: str) -> list[str]:
    """Kernel messages of the guest about failed I/O."""
    _, out = vms.console_run(cluster, vm, "dmesg | grep -iE 'i/o error|critical|"
                             "blk_update|timing out|abort' || true", timeout_s=30)
    return [x for x in out.splitlines() if x.strip()]


@dataclass
class Heartbeat:
    """Samples the heartbeat block of a volume file; remembers when it changed."""

    path: Path
    period_s: float = 0.005
    changes: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _t: threading.Thread | None = None

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            m = _BEAT.search(_read(self.path, 0, 64))
            seq = int(m.group(1)) if m else -1
            if seq != last:
                self.changes.append((time.monotonic(), seq))
                last = seq
            self._stop.wait(self.period_s)

    def __enter__(self) -> Heartbeat:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(timeout=5)

    def gaps_between(self, start: float, end: float) -> list[float]:
        """Seconds between consecutive heartbeats seen in [start, end] (the last one
        before ``start`` counts as the first)."""
        times = [t for t, _ in self.changes if t <= end]
        before = [t for t in times if t < start]
        inside = [t for t in times if t >= start]
        series = before[-1:] + inside
        return [b - a for a, b in itertools.pairwise(series)]

    def pause_after(self, event: float, window_s: float) -> float:
        """The longest time without a heartbeat from ``event`` to ``event+window_s``,
        counting the wait from the last beat before ``event``."""
        gaps = self.gaps_between(event, event + window_s)
        return max(gaps, default=window_s)

    def typical_gap(self, start: float, end: float) -> float:
        gaps = sorted(self.gaps_between(start, end))
        return gaps[len(gaps) // 2] if gaps else 0.0
