"""A lab host's private mount and UTS namespaces, and running commands inside a host.

The network namespace comes from net/netlink.py. The mount namespace gives the host
its own /run, /etc/libvirt, /var/lib/libvirt ... by bind-mounting directories of the
host's state dir over them, so the root namespace can still reach every socket and
log at the state-dir path. Namespaces are kept alive by bind mounts of their nsfs
files (``unshare --mount=FILE``), so no holder process is needed.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from ahvlite.errors import OperationFailed

# Directories a host gets privately: (path inside the host, name under its state dir).
PRIVATE_DIRS: tuple[tuple[str, str], ...] = (
    ("/run", "run"),
    ("/etc/libvirt", "etc/libvirt"),
    ("/var/lib/libvirt", "var/lib/libvirt"),
    ("/var/log/libvirt", "var/log/libvirt"),
    ("/var/cache/libvirt", "var/cache/libvirt"),
    ("/etc/openvswitch", "etc/openvswitch"),
    ("/var/log/openvswitch", "var/log/openvswitch"),
    ("/etc/pki", "etc/pki"),
    ("/etc/ssh", "etc/ssh"),
    # ahvlite's own, as the playbook lays them out on a real host: controller.env,
    # store.secret and pki/ (ahvlite/lab/pki.py), and its virtualenv.
    ("/etc/ahvlite", "etc/ahvlite"),
    ("/opt/ahvlite", "opt/ahvlite"),
    # The netagent's dnsmasq logs (dhcp-br0-10.log): one per host, like the real ones.
    ("/var/log/ahvlite", "var/log/ahvlite"),
)
# ahvlite's own state: private like the rest, but mounted last, because the lab's
# directory (with the shared storage the hosts do see) lives below it.
PRIVATE_STATE = ("/var/lib/ahvlite", "var/lib/ahvlite")
PRIVATE_FILES: tuple[tuple[str, str], ...] = (("/etc/hosts", "etc/hosts"),)


def run(argv: list[str], *, check: bool = True, timeout_s: float = 60,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes OperationFailed carrying its stderr."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                input=input_text, check=False)
    except FileNotFoundError as exc:
        raise OperationFailed(f"{argv[0]} is not installed ({exc})",
                              hint="run `make setup` as root") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{shlex.join(argv)} did not finish in {timeout_s:.0f} s") from None
    if check and result.returncode != 0:
        raise OperationFailed(
            f"{shlex.join(argv)} failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def enter_argv(netns: str, mnt_file: Path, uts_file: Path) -> list[str]:
    """The argv prefix that runs a command inside a lab host."""
    return ["nsenter", f"--net=/run/netns/{netns}", f"--mount={mnt_file}",
            f"--uts={uts_file}", "--"]


def make_private_dir(directory: Path) -> bool:
    """Bind ``directory`` onto itself with private propagation; nsfs files need that.

    Returns True when a mount was made (and must be undone by ``lab down``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if is_mountpoint(directory):
        return False
    run(["mount", "--bind", str(directory), str(directory)])
    run(["mount", "--make-private", str(directory)])
    return True


def is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == target:
            return True
    return False


def create_host_namespaces(*, netns: str, mnt_file: Path, uts_file: Path, state_dir: Path,
                           hostname: str, shared: tuple[Path, ...] = ()) -> None:
    """Create the host's mount and UTS namespaces, with its private directories mounted.

    ``shared``: directories of the root namespace the host sees at the same path (the
    shared storage pool, as NFS would be), although they lie below its private
    /var/lib/ahvlite.
    """
    for _, rel in (*PRIVATE_DIRS, PRIVATE_STATE):
        (state_dir / rel).mkdir(parents=True, exist_ok=True)
    for target, rel in PRIVATE_FILES:
        src = state_dir / rel
        if not src.exists():
            src.write_text(Path(target).read_text() if Path(target).exists() else "")
    for path in (mnt_file, uts_file):
        path.touch()
    lines = [
        "set -e",
        # A fresh sysfs shows the network devices of this namespace, not the root's;
        # libvirt and OVS read /sys/class/net.
        "mount -t sysfs sysfs /sys",
    ]
    for target, rel in (*PRIVATE_DIRS, *PRIVATE_FILES):
        if not Path(target).exists():
            # A mount point must exist; Debian has no /etc/pki by default.
            Path(target).mkdir(parents=True, exist_ok=True)
        lines.append(f"mount --bind {shlex.quote(str(state_dir / rel))} {shlex.quote(target)}")
    # Hold the shared directories in the host's own /run while /var/lib/ahvlite goes
    # private over them, then move them back to their path.
    for i, path in enumerate(shared):
        lines += [f"mkdir -p /run/.lab-shared/{i}",
                  f"mount --bind {shlex.quote(str(path))} /run/.lab-shared/{i}"]
    target, rel = PRIVATE_STATE
    Path(target).mkdir(parents=True, exist_ok=True)
    lines.append(f"mount --bind {shlex.quote(str(state_dir / rel))} {shlex.quote(target)}")
    for i, path in enumerate(shared):
        lines += [f"mkdir -p {shlex.quote(str(path))}",
                  f"mount --move /run/.lab-shared/{i} {shlex.quote(str(path))}"]
    lines.append(f"hostname {shlex.quote(hostname)}")
    script = "\n".join(lines)
    run(["nsenter", f"--net=/run/netns/{netns}", "--", "unshare", f"--mount={mnt_file}",
         f"--uts={uts_file}", "--propagation", "private", "--", "sh", "-c", script])


def release_ns_file(path: Path) -> None:
    """Unmount a persisted namespace file; the namespace dies with its last process."""
    if path.exists():
        if is_mountpoint(path):
            run(["umount", "--lazy", str(path)], check=False)
        path.unlink(missing_ok=True)
