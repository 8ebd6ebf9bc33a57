"""``ahvlite host provision``: run playbooks/host.yml on hosts of the cluster.

Ansible runs here, on the admin's machine; the inventory comes from the cluster as the
API serves it (``GET /v1/cluster``), or, before any controller runs (the first
provisioning of new hosts), from a cluster file given with ``-f``. The cluster CA and
the controllers' ZooKeeper secret are kept in ``--pki-dir``: beside the ``-f`` file,
else ``~/.config/ahvlite/pki`` (the admin's machine keeps them, not the store).

SSH: the key and known_hosts a host entry names are the controllers' files; ansible
runs here, so ``--ssh-key``/``--known-hosts`` name this machine's, and without them an
entry's file is used only where this machine has it too (a lab, or a controller host),
else ssh's own defaults (``~/.ssh``, the agent) apply. With ``-f`` the file's paths are
this machine's, as they always were.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cluster import provision, sharedpool
from ahvlite.errors import NotFound

if TYPE_CHECKING:
    from ahvlite.remote import ansible
    from ahvlite.spec.cluster import ClusterSpec

PLAYBOOK = "host.yml"
DEFAULT_PKI_DIR = Path("~/.config/ahvlite/pki")


def _lab_settings(name: str, cluster: ClusterSpec
                  ) -> tuple[provision.Profile, Path, dict[str, dict[str, Any]], str]:
    """A lab's hosts: external daemons, certificates where the lab keeps them, and the
    lab's own store credential."""
    from ahvlite.lab.layout import plan_layout
    from ahvlite.lab.paths import cache_dir, lab_root
    from ahvlite.lab.services import LAB_WATCHDOG, lab_zk_members
    from ahvlite.lab.state import LabState
    from ahvlite.spec.lab import LabSpec

    state = LabState.load(lab_root(name) / "state.json")
    if state is None:
        raise NotFound(f"the cluster belongs to lab {name!r}, which is not up",
                       hint=f"`ahvlite lab up --name {name}` first")
    layout = plan_layout(LabSpec(name=name, hosts=state.hosts or len(cluster.hosts),
                                 subnet=ipaddress.IPv4Network(state.subnet)), lab_root(name))
    # The lab issued each host's certificates into its private /etc/pki (seen from
    # here under its state directory); the play keeps them while they are valid.
    per_host = {h.name: {"libvirt_tls_source_dir": str(h.state_dir / "etc" / "pki"),
                         "ahvlite_pki_source_dir": str(h.etc_ahvlite / "pki"),
                         "ahvlite_cert_name": h.hostname}
                for h in layout.hosts}
    members = [h.name for h in layout.hosts[:len(lab_zk_members(layout))]]
    profile = provision.lab_profile(lockspace_dir=layout.lockspace_dir, zk_members=members,
                                    # Seen by the lab hosts (their /var/lib/ahvlite is
                                    # private); built again for a new version.
                                    wheel_dir=cache_dir() / "wheels" / name,
                                    watchdog=f"unix:{LAB_WATCHDOG}")
    secret = ""
    if layout.store_secret_file.exists():
        secret = layout.store_secret_file.read_text().strip().partition(":")[2]
    return profile, layout.pki_dir, per_host, secret


def zk_secret(pki_dir: Path, *, create: bool = True) -> str:
    """The cluster's ZooKeeper secret, kept in ``pki_dir`` (0600, beside the CA key).

    Generated on the first run and reused after, so every host's controller.env carries
    the same credential and a second run changes nothing. With ``create`` false (check
    mode) a missing one is not written: a throwaway value stands in for it.
    """
    path = pki_dir / provision.ZK_SECRET_FILE
    if not path.exists():
        if not create:
            return secrets.token_hex(24)
        pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=pki_dir, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(24) + "\n")
            # link() never replaces: of two runs racing here, both use the first one's.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # e.g. copied or restored with a loose umask: tighten it
    return provision.check_zk_secret(str(path), path.read_text().strip())


def cluster_source(spec_file: Path | None) -> ClusterSpec:
    """The cluster to provision: a file given with ``-f``, else the API's."""
    from ahvlite.spec.cluster import ClusterSpec, load_cluster

    if spec_file is not None:
        return load_cluster(spec_file)
    from ahvlite.cli.api import get
    from ahvlite.spec.errors import build

    return build(ClusterSpec, **get("/v1/cluster"))


def with_local_ssh(spec: ClusterSpec, *, key: Path | None, known_hosts: Path | None,
                   from_api: bool) -> ClusterSpec:
    """The spec with the SSH files ansible uses on this machine (see the module doc)."""
    hosts = []
    for h in spec.hosts:
        s = h.ssh
        if s is not None:
            k = key or (s.key if not from_api or (s.key and s.key.exists()) else None)
            kh = known_hosts or (s.known_hosts if not from_api
                                 or (s.known_hosts and s.known_hosts.exists()) else None)
            h = h.model_copy(update={"ssh": s.model_copy(update={"key": k,
                                                                 "known_hosts": kh})})
        hosts.append(h)
    out = spec.model_copy(update={"hosts": hosts})
    out._source = spec.source
    return out


@contextlib.contextmanager
def cluster_file_for(spec: ClusterSpec, spec_file: Path | None) -> Iterator[Path]:
    """A cluster file the play's network module reads on this machine: the ``-f`` file,
    or the API's spec in a private temporary directory for the run."""
    if spec_file is not None:
        yield spec_file.resolve()
        return
    d = Path(tempfile.mkdtemp(prefix="ahvlite-provision-"))  # 0700
    try:
        path = d / "cluster.yaml"
        path.write_text(spec.dump_yaml())
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def provision_inputs(hosts: list[str], *, spec: ClusterSpec, cluster_file: Path,
                     pki_dir: Path | None, check: bool
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inventory and extra variables of a run (nothing is written if one is refused).
    ``pki_dir`` None: beside ``cluster_file`` when the spec came from one (``-f``)."""
    lab_name = provision.is_lab(spec)
    lab_secret = ""
    if lab_name:
        profile, pki, per_host, lab_secret = _lab_settings(lab_name, spec)
    else:
        default = (cluster_file.resolve().parent / "pki" if spec.source is not None
                   else DEFAULT_PKI_DIR.expanduser())
        profile, pki, per_host = provision.Profile(), pki_dir or default, {}
    inventory = provision.build_inventory(spec, hosts, cluster_file=cluster_file.resolve(),
                                          pki_dir=pki, profile=profile, per_host=per_host)
    # Refused before anything is written: no shared storage, no provisioning.
    pool_vars, pool_per_host = sharedpool.provision_vars(spec)
    group = inventory["all"]["children"][provision.GROUP]
    for h, v in pool_per_host.items():
        if h in group["hosts"]:
            group["hosts"][h].update(v)
    group["vars"] = {**pool_vars, **group["vars"]}
    # A lab's daemons already use the lab's credential: provisioning keeps it.
    secret = lab_secret or zk_secret(pki, create=not check)
    return inventory, provision.run_vars(secret)


def provision_hosts(hosts: list[str], *, spec_file: Path | None, pki_dir: Path | None,
                    check: bool, tags: list[str], skip_tags: list[str],
                    report: ansible.Progress, ssh_key: Path | None = None,
                    known_hosts: Path | None = None) -> ansible.PlaybookResult:
    from ahvlite.remote import ansible

    tag_list = provision.check_tags("--tags", tags)
    skip_list = provision.check_tags("--skip-tags", skip_tags)
    spec = with_local_ssh(cluster_source(spec_file), key=ssh_key, known_hosts=known_hosts,
                          from_api=spec_file is None)
    with cluster_file_for(spec, spec_file) as cluster_file:
        inventory, extravars = provision_inputs(hosts, spec=spec, cluster_file=cluster_file,
                                                pki_dir=pki_dir, check=check)
        return ansible.run_playbook(PLAYBOOK, inventory, check=check, tags=tag_list,
                                    skip_tags=skip_list, limit=provision.limit(hosts),
                                    extravars=extravars, progress=report)


def provision_cmd(
    hosts: Annotated[list[str] | None, typer.Argument(help="Hosts (default: all).")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Report what would change, change nothing.")] = False,
    tags: Annotated[list[str] | None, typer.Option(
        "--tags", help=f"Only these parts ({', '.join(provision.TAGS)}).")] = None,
    skip_tags: Annotated[list[str] | None, typer.Option(
        "--skip-tags", help="Leave these parts out.")] = None,
    spec_file: Annotated[Path | None, typer.Option(
        "-f", "--file", help="Provision the hosts of this cluster file (before any "
                             "controller runs); default: the cluster the API serves.")] = None,
    pki_dir: Annotated[Path | None, typer.Option(
        "--pki-dir", help="Where the cluster CA and ZooKeeper secret are kept (default: "
                          "beside the -f file, else ~/.config/ahvlite/pki).")] = None,
    ssh_key: Annotated[Path | None, typer.Option(
        "--ssh-key", help="SSH key ansible uses from here (default: the host entry's, "
                          "where this machine has it; else ssh's own).")] = None,
    known_hosts: Annotated[Path | None, typer.Option(
        "--known-hosts", help="known_hosts ansible checks host keys against from here.")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Provision hosts with playbooks/host.yml (ansible, run here): packages, IOMMU,
    libvirtd TLS, virtlockd, br0 + bond, virbr0, ZooKeeper and the controller.
    Idempotent."""
    with progress(not json_out, "starting ansible") as report:
        result = provision_hosts(hosts or [], spec_file=spec_file, pki_dir=pki_dir,
                                 check=check, tags=tags or [], skip_tags=skip_tags or [],
                                 report=report, ssh_key=ssh_key, known_hosts=known_hosts)
    if json_out:
        emit_json(result.to_dict())
        return
    verb = "would change" if check else "changed"
    rows = [[h, s.get("ok", 0), s.get("changed", 0), s.get("skipped", 0),
             s.get("failures", 0) + s.get("dark", 0)] for h, s in sorted(result.stats.items())]
    console.print(table(f"{PLAYBOOK}{' (check mode)' if check else ''}",
                        ["host", "ok", verb, "skipped", "failed"], rows))
    for c in result.changes:
        detail = f": {c.detail}" if c.detail else ""
        console.print(f"  {c.host}: {verb} {c.role + ' / ' if c.role else ''}{c.task}{detail}",
                      highlight=False)
    if not result.changes:
        err_console.print("nothing to change" if check else "no changes (already provisioned)")
