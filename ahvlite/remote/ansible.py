"""Running ahvlite's playbooks with ansible-runner (the only module importing it).

The inventory comes in as a dict (``cluster/provision.py`` builds it from the cluster
file); runner events are turned into per-task progress callbacks and, at the end,
into a result with what changed per host, or an ``OperationFailed`` naming the task,
the host and ansible's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from ahvlite.errors import (
    HostUnreachable,
    MissingDependency,
    NotFound,
    OperationFailed,
    OperationTimeout,
)

PLAYBOOKS_ENV = "AHVLITE_PLAYBOOKS"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class TaskChange:
    host: str
    task: str
    role: str | None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "task": self.task, "role": self.role, "detail": self.detail}


@dataclass(frozen=True)
class TaskFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "task": self.task, "message": self.message,
                "unreachable": self.unreachable}


@dataclass
class PlaybookResult:
    playbook: str
    check: bool
    status: str
    rc: int
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> ok/changed/...
    changes: list[TaskChange] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)
    tasks_seen: int = 0

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())

    def to_dict(self) -> dict[str, Any]:
        return {"playbook": self.playbook, "check": self.check, "status": self.status,
                "rc": self.rc, "changed": self.changed, "stats": self.stats,
                "changes": [c.to_dict() for c in self.changes],
                "failures": [f.to_dict() for f in self.failures]}


def playbooks_dir() -> Path:
    """``playbooks/`` of this checkout, or $AHVLITE_PLAYBOOKS."""
    env = os.environ.get(PLAYBOOKS_ENV)
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "playbooks"
    if not (d / "host.yml").exists():
        raise NotFound(f"no playbooks in {d} (host.yml missing)",
                       hint=f"set {PLAYBOOKS_ENV} to ahvlite's playbooks/ directory")
    return d


def ansible_playbook() -> Path:
    """The ansible-playbook beside this Python (the venv's), else the one on PATH.

    ahvlite's modules in playbooks/library run on the controller with the Python that
    runs ansible, so it must be the one that can import ahvlite.
    """
    mine = Path(sys.prefix) / "bin" / "ansible-playbook"
    if mine.exists():
        return mine
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "ansible-playbook").exists():
            return Path(d) / "ansible-playbook"
    raise MissingDependency("ansible-playbook not found", hint="pip install ansible-core "
                            "into the environment ahvlite runs from")


def _message(res: dict[str, Any]) -> str:
    parts = [str(res[k]).strip() for k in ("msg", "stderr", "module_stderr", "reason")
             if res.get(k)]
    for name, sub in (res.get("failed_modules") or {}).items():
        parts += [f"{name}: {str(sub[k]).strip()}" for k in ("msg", "module_stderr")
                  if isinstance(sub, dict) and sub.get(k)]
    if not parts and res.get("stdout"):
        parts = [str(res["stdout"]).strip()]
    text = "; ".join(dict.fromkeys(parts)) or "failed without a message"
    return text if len(text) <= 600 else text[:600] + " ..."


def _detail(res: dict[str, Any]) -> str | None:
    if isinstance(res.get("results"), list):  # a loop: which items changed
        items = [str(r.get("_ansible_item_label", r.get("item", ""))) for r in res["results"]
                 if isinstance(r, dict) and r.get("changed")]
        return ", ".join(items) or None
    if res.get("steps"):
        return "; ".join(res["steps"])
    if res.get("reason"):
        return str(res["reason"])
    return None


class _Events:
    """Turns runner events into progress lines and the result's lists."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.changes: list[TaskChange] = []
        self.failures: list[TaskFailure] = []
        self.tasks = 0
        self.stats: dict[str, dict[str, int]] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        task = str(data.get("task", "")).strip()
        host = str(data.get("host", ""))
        res = data.get("res", {}) or {}
        if kind == "playbook_on_task_start":
            self.tasks += 1
            role = data.get("role")
            self.progress(f"task {self.tasks}: {role + ': ' if role else ''}{task}")
        elif kind == "runner_on_ok" and res.get("changed"):
            if not data.get("ignore_errors"):
                self.changes.append(TaskChange(host, task, data.get("role"), _detail(res)))
            self.progress(f"{host}: changed: {task}")
        elif kind == "runner_item_on_ok" and res.get("changed"):
            self.progress(f"{host}: changed: {task} ({res.get('_ansible_item_label', '')})")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.failures.append(TaskFailure(host, task, _message(res)))
            self.progress(f"{host}: FAILED: {task}")
        elif kind == "runner_on_unreachable":
            self.failures.append(TaskFailure(host, task, _message(res), unreachable=True))
            self.progress(f"{host}: UNREACHABLE: {task}")
        elif kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                for h, n in (data.get(key) or {}).items():
                    self.stats.setdefault(h, {})[key] = n
        return True  # keep the event in the artifacts


def run_playbook(playbook: str, inventory: dict[str, Any], *, check: bool = False,
                 tags: list[str] | None = None, skip_tags: list[str] | None = None,
                 limit: str | None = None, extravars: dict[str, Any] | None = None,
                 progress: Progress = _quiet, timeout_s: int = 1800) -> PlaybookResult:
    """Run ``playbook`` (a file in playbooks/) against ``inventory``; raise on failure."""
    project = playbooks_dir()
    if not (project / playbook).exists():
        raise NotFound(f"playbook {playbook} not found in {project}")
    binary = ansible_playbook()
    events = _Events(progress)
    with tempfile.TemporaryDirectory(prefix="ahvlite-ansible-") as tmp:
        private = Path(tmp)
        envvars = {
            # Keep ansible's own state (ssh ControlPath sockets, tmp) with this run
            # rather than in ~/.ansible, and never ask questions.
            "ANSIBLE_HOME": str(private / "home"),
            "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
            # A persistent SSH master is reused by any later run with the same
            # user@host:port and skips host key checking: keep masters to this run.
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private / "cp"),
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=30s",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_ROLES_PATH": str(project / "roles"),
            "ANSIBLE_LIBRARY": str(project / "library"),
            "PATH": os.pathsep.join([str(binary.parent), os.environ.get("PATH", "")]),
        }
        # Tasks delegated to the controller machine run here, with this Python (it
        # imports ahvlite) and their temporary files inside this run's directory.
        inventory = {**inventory, "all": {**inventory.get("all", {}), "hosts": {
            **inventory.get("all", {}).get("hosts", {}),
            "localhost": {"ansible_connection": "local",
                          "ansible_python_interpreter": sys.executable,
                          "ansible_remote_tmp": str(private / "local")}}}}
        # No `binary=`: with it, ansible-runner leaves the playbook off the command line.
        # PATH above makes the venv's ansible-playbook the one found.
        # No --diff: it would put the contents of copied private keys into events.
        cmdline = ["--check"] if check else []
        if extravars:
            # ansible-runner puts a dict of extra vars on ansible-playbook's command line,
            # where every user of the machine reads them (the store's secret is one): a
            # file of this run's (0600, in its private directory) goes there instead.
            _write_private(private / "env" / "extravars", json.dumps(extravars))
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(project), playbook=playbook,
            inventory=inventory, envvars=envvars,
            cmdline=" ".join(cmdline) or None, limit=limit,
            tags=",".join(tags) if tags else None,
            skip_tags=",".join(skip_tags) if skip_tags else None,
            event_handler=events, quiet=True, timeout=timeout_s,
            suppress_env_files=True)
        status, rc = str(runner.status), int(runner.rc if runner.rc is not None else -1)
        stdout_tail = _tail(runner)
        _close_ssh_masters(private / "cp")
    result = PlaybookResult(playbook=playbook, check=check, status=status, rc=rc,
                            stats=events.stats, changes=events.changes,
                            failures=events.failures, tasks_seen=events.tasks)
    _raise_on_failure(result, stdout_tail)
    return result


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _close_ssh_masters(control_dir: Path) -> None:
    """End this run's persistent SSH masters now instead of after ControlPersist."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        # -O exit asks the master on this socket (started by this run) to leave.
        subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "ahvlite-master"],
                       capture_output=True, timeout=10, check=False)


def _tail(runner: Any) -> str:
    """The end of ansible's output, read from the run's artifact file.

    Not ``runner.stdout``: that opens a new file handle nobody closes (and raises when
    the file is missing).
    """
    try:
        path = Path(runner.config.artifact_dir) / "stdout"
        with path.open(errors="replace") as f:
            return f.read()[-1200:]
    except (OSError, AttributeError, TypeError):
        return ""


def _raise_on_failure(result: PlaybookResult, stdout_tail: str) -> None:
    if result.failures:
        lines = [f"host {f.host}: task '{f.task}' "
                 f"{'unreachable' if f.unreachable else 'failed'}: {f.message}"
                 for f in result.failures[:5]]
        if len(result.failures) > 5:
            lines.append(f"... and {len(result.failures) - 5} more")
        cls = HostUnreachable if all(f.unreachable for f in result.failures) else OperationFailed
        verb = "would fail" if result.check else "failed"
        raise cls(f"{result.playbook} {verb}: " + "\n".join(lines),
                  hint="fix the cause and run again: the playbook is idempotent")
    if result.status == "timeout":
        raise OperationTimeout(f"{result.playbook} did not finish in time (rc {result.rc})",
                               hint="see which task it was on: re-run without --json")
    if result.status != "successful":
        # No task failed, so ansible refused before running (syntax, inventory, tags).
        raise OperationFailed(f"ansible-playbook {result.status} (rc {result.rc}) before "
                              f"any task failed: {stdout_tail.strip()[-600:]}")
