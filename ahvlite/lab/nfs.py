"""An NFS server in a lab host's namespaces: nfs-ganesha (userspace, VFS backend).

For drills and tests of the shared pool on "real" hosts: the playbook defines a
libvirt netfs pool against it, as a Vagrant box's export or a filer would be. NFSv4
only over TCP, so no rpcbind is needed; the process is recorded like every lab daemon
(role ``nfs-server``) and ended by ``lab down``.
"""

from __future__ import annotations

from pathlib import Path

from ahvlite.clock import wait_until
from ahvlite.errors import OperationTimeout
from ahvlite.lab import lab, namespaces, processes
from ahvlite.lab.layout import HostLayout
from ahvlite.lab.services import inside

ROLE = "nfs-server"
PSEUDO = "/ahvlite"  # the NFSv4 path clients mount: SERVER:/ahvlite
NFS_PORT = 2049


def ganesha_conf(export_dir: Path, recovery_dir: Path) -> str:
    return f"""\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {NFS_PORT};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSv4 {{
    RecoveryRoot = "{recovery_dir}";
    Graceless = true;
    Only_Numeric_Owners = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export_dir}";
    Pseudo = "{PSEUDO}";
    Protocols = 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


# Where the server keeps its configuration, state and export, as the host sees it: its
# own disk (its private /var/lib/ahvlite), as a filer's export is on the filer.
SERVER_DIR = Path("/var/lib/ahvlite/nfs")


def start_server(name: str, host: str, *, timeout_s: float = 20) -> tuple[str, Path]:
    """Serve an export on lab host ``host``'s own disk over NFSv4. Returns SERVER:/PATH
    and where the export directory lies as seen from the root namespace."""
    layout, state = lab.layout_of(name), lab.state_of(name)
    h: HostLayout = layout.host(host)
    base = inside(h, SERVER_DIR)
    for sub in ("recovery", "export"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "ganesha.conf").write_text(ganesha_conf(SERVER_DIR / "export",
                                                    SERVER_DIR / "recovery"))
    argv = [*namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file),
            "ganesha.nfsd", "-F", "-f", str(SERVER_DIR / "ganesha.conf"),
            "-L", str(SERVER_DIR / "ganesha.log"), "-p", str(SERVER_DIR / "ganesha.pid")]
    record = processes.spawn(argv, log=h.state_dir / "logs" / f"{ROLE}.log", host=host,
                             role=ROLE)
    state.processes.append(record)
    state.save(layout.state_file)
    probe = [*namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file),
             "nfs-ls", f"nfs://{h.ip}{PSEUDO}?version=4"]

    def serving() -> str:
        if namespaces.run(probe, check=False, timeout_s=10).returncode == 0:
            return "serving"
        return "" if processes.is_alive(record) else "died"

    if wait_until(serving, timeout_s=timeout_s, interval_s=0.3) != "serving":
        raise OperationTimeout(f"{host}: nfs-ganesha did not serve {PSEUDO} in "
                               f"{timeout_s:g} s", hint=f"see {base / 'ganesha.log'}")
    return f"{h.ip}:{PSEUDO}", base / "export"
