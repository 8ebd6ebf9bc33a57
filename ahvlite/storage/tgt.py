"""A host's iSCSI target (tgt's tgtd), through ``tgtadm``: intent-named operations.

tgtd keeps its targets in memory only: a restarted tgtd has none, which is why the
redirector reconciles its host's target against the shared pool (redirector.py) and
why the health target comes last (see ``ensure_exports``).

The commands run through an injected ``Run`` (argv -> stdout, raising
OperationFailed): a local subprocess on the host itself (the redirector), or SSH from
wherever the VM layer runs (cluster/luns.py). Parsing of tgtadm's output is pure.

Backing files are opened with O_DIRECT (``--bsoflags direct``): a target that dies
must leave nothing acknowledged in its host's page cache, where another host's target
(on NFS, another kernel) would not see it and a late write-back could overwrite newer
data written through that other target.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ahvlite.errors import Conflict, MissingDependency, OperationFailed
from ahvlite.storage.health import Session
from ahvlite.storage.names import DISK_LUN, HEALTH_TARGET, is_volume_target

Run = Callable[[list[str]], str]
TGTADM = ("tgtadm", "--lld", "iscsi")
# tgt offers 8 KiB data segments by default: a 1 MiB write then travels as 128 PDUs
# with R2T round trips (about a third of the throughput, measured with qemu-img bench).
# Large segments and unsolicited data, as libiscsi (QEMU's initiator) asks for.
DISK_TARGET_PARAMS = (("MaxRecvDataSegmentLength", "262144"),
                      ("MaxXmitDataSegmentLength", "262144"),
                      ("FirstBurstLength", "262144"), ("MaxBurstLength", "1048576"),
                      ("InitialR2T", "No"), ("ImmediateData", "Yes"))


@dataclass
class Target:
    tid: int
    iqn: str
    luns: dict[int, str] = field(default_factory=dict)  # LUN -> backing path ('' for none)
    sessions: list[Session] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)

    @property
    def backing(self) -> str | None:
        return self.luns.get(DISK_LUN) or None


_TARGET = re.compile(r"^Target (\d+): (\S+)$")
_NEXUS = re.compile(r"^I_T nexus: (\d+)$")
_INITIATOR = re.compile(r"^Initiator: (\S+)")
_CONNECTION = re.compile(r"^Connection: (\d+)$")
_ADDRESS = re.compile(r"^IP Address: (\S+)$")
_LUN = re.compile(r"^LUN: (\d+)$")
_BACKING = re.compile(r"^Backing store path: (.*)$")


def parse_show(text: str) -> list[Target]:
    """``tgtadm --lld iscsi --op show --mode target`` -> targets with LUNs, sessions and
    ACLs. Lines it does not know are skipped (tgt prints many)."""
    targets: list[Target] = []
    cur: Target | None = None
    section = ""
    sid = cid = -1
    initiator = ""
    lun = -1
    for raw in text.splitlines():
        line = raw.strip()
        if m := _TARGET.match(raw.rstrip()):
            cur = Target(tid=int(m.group(1)), iqn=m.group(2))
            targets.append(cur)
            section = ""
            continue
        if cur is None or not line:
            continue
        if line.endswith("information:"):
            section = line.split()[0]  # System, I_T, LUN, Account, ACL
            continue
        if section == "I_T":
            if m := _NEXUS.match(line):
                sid, initiator = int(m.group(1)), ""
            elif m := _INITIATOR.match(line):
                initiator = m.group(1)
            elif m := _CONNECTION.match(line):
                cid = int(m.group(1))
            elif (m := _ADDRESS.match(line)) and sid >= 0:
                cur.sessions.append(Session(tid=cur.tid, target=cur.iqn, sid=sid, cid=cid,
                                            initiator=initiator, address=m.group(1)))
        elif section == "LUN":
            if m := _LUN.match(line):
                lun = int(m.group(1))
                cur.luns[lun] = ""
            elif (m := _BACKING.match(line)) and lun >= 0:
                path = m.group(1).strip()
                cur.luns[lun] = "" if path == "None" else path
        elif section == "ACL":
            cur.acl.append(line)
    return targets


def local_run(timeout_s: float = 20) -> Run:
    """tgtadm on this host (the redirector's own)."""
    def run(argv: list[str]) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except FileNotFoundError:
            raise MissingDependency(f"{argv[0]} is not installed",
                                    hint="apt-get install tgt") from None
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"{' '.join(argv)} did not finish in {timeout_s:g} s") \
                from None
        if proc.returncode != 0:
            raise OperationFailed(f"{' '.join(argv)} failed ({proc.returncode}): "
                                  f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc.stdout
    return run


class Tgt:
    """One tgtd, reached through ``run``."""

    def __init__(self, run: Run, *, control_port: int = 0) -> None:
        self.run = run
        # tgtd's management socket is /run/tgtd/socket.PORT (tgtd -C PORT).
        self.control = ["-C", str(control_port)] if control_port else []

    def _adm(self, *args: str) -> str:
        return self.run([TGTADM[0], *self.control, *TGTADM[1:], *args])

    def targets(self) -> list[Target]:
        return parse_show(self._adm("--op", "show", "--mode", "target"))

    def find(self, iqn: str) -> Target | None:
        return next((t for t in self.targets() if t.iqn == iqn), None)

    def export(self, iqn: str, path: str, initiators: Iterable[str], *,
               attempts: int = 5) -> bool:
        """Target ``iqn`` with LUN 1 = ``path``, open to ``initiators`` (addresses).
        False when it was already there as asked; Conflict when the IQN serves another
        file. Concurrent exporters (the VM layer and the redirector) may race for a
        target id: a lost race is retried from a fresh listing."""
        allowed = sorted(set(initiators))
        last: OperationFailed | None = None
        for _ in range(attempts):
            current = self.targets()
            existing = next((t for t in current if t.iqn == iqn), None)
            try:
                if existing is None:
                    tid = max((t.tid for t in current), default=0) + 1
                    self._adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
                    for name, value in DISK_TARGET_PARAMS:
                        self._adm("--op", "update", "--mode", "target", "--tid", str(tid),
                                  "--name", name, "--value", value)
                    existing = Target(tid=tid, iqn=iqn)
                    changed = True
                else:
                    changed = False
                if existing.backing is None:
                    self._adm("--op", "new", "--mode", "logicalunit", "--tid",
                              str(existing.tid), "--lun", str(DISK_LUN), "-b", path,
                              "--bstype", "rdwr", "--bsoflags", "direct")
                    changed = True
                elif existing.backing != path:
                    raise Conflict(f"target {iqn} serves {existing.backing}, not {path}")
                changed |= self._bind(existing, allowed)
                return changed
            except OperationFailed as exc:
                last = exc
        assert last is not None
        raise last

    def _bind(self, t: Target, allowed: list[str]) -> bool:
        changed = False
        for addr in allowed:
            if addr not in t.acl:
                self._adm("--op", "bind", "--mode", "target", "--tid", str(t.tid), "-I", addr)
                changed = True
        for addr in t.acl:
            if addr not in allowed:
                self._adm("--op", "unbind", "--mode", "target", "--tid", str(t.tid),
                          "-I", addr)
                changed = True
        return changed

    def ensure_health_target(self, initiators: Iterable[str]) -> bool:
        """The target the redirectors' health sessions log in to (no disk)."""
        allowed = sorted(set(initiators))
        current = self.targets()
        t = next((x for x in current if x.iqn == HEALTH_TARGET), None)
        if t is None:
            tid = max((x.tid for x in current), default=0) + 1
            self._adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T",
                      HEALTH_TARGET)
            t = Target(tid=tid, iqn=HEALTH_TARGET)
            self._bind(t, allowed)
            return True
        return self._bind(t, allowed)

    def unexport(self, iqn: str, *, force: bool = False) -> bool:
        """Remove target ``iqn``; False when it did not exist. Without ``force`` a target
        with sessions is left alone (Conflict): a VM still uses it."""
        t = self.find(iqn)
        if t is None:
            return False
        if t.sessions and not force:
            who = ", ".join(sorted({s.initiator for s in t.sessions}))
            raise Conflict(f"target {iqn} still has sessions ({who})",
                           hint="stop the VM that uses the disk first")
        args = ["--op", "delete", "--mode", "target", "--tid", str(t.tid)]
        self._adm(*args, *(["--force"] if force else []))
        return True

    def end_session(self, s: Session) -> None:
        """Close one initiator connection: the initiator sees the connection drop and
        logs in again (through its redirector)."""
        self._adm("--op", "delete", "--mode", "conn", "--tid", str(s.tid), "--sid",
                  str(s.sid), "--cid", str(s.cid))


@dataclass(frozen=True)
class ExportPlan:
    add: list[tuple[str, str]]  # (iqn, path)
    remove: list[str]  # iqns whose volume is gone


def plan_exports(targets: list[Target], wanted: dict[str, str]) -> ExportPlan:
    """What makes a target's exports ``wanted`` (iqn -> path). Only volume targets
    (ours) are ever removed, and only when their iqn is no longer wanted."""
    have = {t.iqn: t for t in targets}
    add = sorted((iqn, path) for iqn, path in wanted.items()
                 if iqn not in have or have[iqn].backing != path)
    remove = sorted(t.iqn for t in targets if is_volume_target(t.iqn) and t.iqn not in wanted)
    return ExportPlan(add=add, remove=remove)
