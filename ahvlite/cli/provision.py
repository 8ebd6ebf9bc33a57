"""``ahvlite host provision``: run playbooks/host.yml on hosts of the cluster file."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cluster import provision
from ahvlite.errors import NotFound
from ahvlite.remote import ansible
from ahvlite.spec.cluster import ClusterSpec

PLAYBOOK = "host.yml"


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
        raise NotFound(f"the cluster file belongs to lab {name!r}, which is not up",
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


def provision_inputs(hosts: list[str], *, cluster: Path | None, check: bool
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inventory and extra variables of a run (nothing is written if one is refused)."""
    path, spec = load(cluster)
    lab_name = provision.is_lab(spec)
    lab_secret = ""
    if lab_name:
        profile, pki_dir, per_host, lab_secret = _lab_settings(lab_name, spec)
    else:
        profile, pki_dir, per_host = provision.Profile(), path.resolve().parent / "pki", {}
    inventory = provision.build_inventory(spec, hosts, cluster_file=path.resolve(),
                                          pki_dir=pki_dir, profile=profile, per_host=per_host)
    # A lab's daemons already use the lab's credential: provisioning keeps it.
    secret = lab_secret or zk_secret(pki_dir, create=not check)
    return inventory, provision.run_vars(secret)


def provision_hosts(hosts: list[str], *, cluster: Path | None, check: bool, tags: list[str],
                    skip_tags: list[str], report: ansible.Progress) -> ansible.PlaybookResult:
    tag_list = provision.check_tags("--tags", tags)
    skip_list = provision.check_tags("--skip-tags", skip_tags)
    inventory, extravars = provision_inputs(hosts, cluster=cluster, check=check)
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
    cluster: ClusterOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Provision hosts with playbooks/host.yml (ansible): packages, IOMMU, libvirtd TLS,
    virtlockd, br0 + bond, virbr0, ZooKeeper and the controller. Idempotent."""
    with progress(not json_out, "starting ansible") as report:
        result = provision_hosts(hosts or [], cluster=cluster, check=check, tags=tags or [],
                                 skip_tags=skip_tags or [], report=report)
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
