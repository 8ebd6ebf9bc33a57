"""Host task kinds: add a host after checking it answers, remove one with no VM running.

The files a host entry names (SSH key, known_hosts, OVSDB certificates) are files on
the controllers (``cluster.hostfiles``): ``--key``/``--known-hosts`` name them there,
and without them the controllers' own key and known_hosts are used.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ahvlite.cluster import hostfiles
from ahvlite.controller.kinds.base import HOST_FIELD, Params
from ahvlite.controller.kinds.spec import SpecKind, spec_json
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec, HostSpec, SshSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import OvsdbSpec
from ahvlite.spec.uri import check_uri

USER_AT_HOST = r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"
OVSDB_REMOTE = r"^ssl:[A-Za-z0-9.:\[\]-]{1,260}$"


class HostAddParams(Params):
    name: str = HOST_FIELD
    uri: str
    ssh: str | None = Field(None, pattern=USER_AT_HOST, description="USER@HOST or HOST")
    ssh_port: int = Field(22, ge=1, le=65535)
    key: str | None = Field(None, max_length=4096, description="SSH key, on the controllers")
    known_hosts: str | None = Field(None, max_length=4096,
                                    description="known_hosts, on the controllers")
    trust_on_first_use: bool = False
    ovsdb: str | None = Field(None, pattern=OVSDB_REMOTE, description="ssl:ADDR:PORT")
    labels: dict[str, str] = Field(default_factory=dict)
    strict: bool = False

    @model_validator(mode="after")
    def _forms(self) -> HostAddParams:
        check_uri(self.uri, "uri")
        for field in ("key", "known_hosts", "trust_on_first_use"):
            if getattr(self, field) and not self.ssh:
                raise InvalidSpec(field, getattr(self, field), "only together with ssh")
        return self


def host_entry(p: HostAddParams) -> HostSpec:
    """The host's entry in the cluster spec: SSH through the controllers' own key and
    known_hosts unless others are named; OVSDB over TLS with their own certificate."""
    ssh = None
    if p.ssh:
        user, _, addr = p.ssh.rpartition("@")
        ssh = SshSpec(host=addr, user=user or "root", port=p.ssh_port,
                      key=p.key or hostfiles.SSH_KEY,  # type: ignore[arg-type]
                      known_hosts=p.known_hosts or hostfiles.KNOWN_HOSTS)  # type: ignore[arg-type]
    ovsdb = None
    if p.ovsdb:
        ovsdb = OvsdbSpec(remote=p.ovsdb, ca_cert=hostfiles.OVSDB_CA,  # type: ignore[arg-type]
                          certificate=hostfiles.OVSDB_CERT,  # type: ignore[arg-type]
                          private_key=hostfiles.OVSDB_KEY)  # type: ignore[arg-type]
    return build(HostSpec, name=p.name, uri=p.uri, ssh=ssh, labels=dict(p.labels), ovsdb=ovsdb)


def _added_as_asked(cluster: ClusterSpec, host: HostSpec) -> bool:
    return any(spec_json(h) == spec_json(host) for h in cluster.hosts)


def check_controller_files(host: HostSpec, *, prefix: str = "") -> None:
    """The files ``host`` names are in the controllers' roots, and (on the leader)
    there: the SSH key and the OVSDB certificates must exist; a known_hosts file may
    still be missing (trust on first use writes it)."""
    hostfiles.check_host_files(host, prefix=prefix)
    if host.ssh is not None:
        hostfiles.check_readable(f"{prefix}ssh.key", host.ssh.key)  # type: ignore[arg-type]
    if host.ovsdb is not None:
        for f in ("ca_cert", "certificate", "private_key"):
            hostfiles.check_readable(f"{prefix}ovsdb.{f}", getattr(host.ovsdb, f))


class HostAdd(SpecKind[HostAddParams]):
    """``host.add``: check libvirt (and SSH) answer at the new host, plan what its CPU
    does to the cluster CPU level (lower it, or refuse with ``strict``), record the
    host by compare-and-set, then store a lowered level and redefine the VMs to it.

    Every step checks first: a resumed run whose host is already recorded exactly as
    asked goes on from there (the CPU level step redefines only VMs that differ).
    """

    name = "host.add"
    Params = HostAddParams

    def check(self, p: HostAddParams) -> None:
        host = host_entry(p)
        hostfiles.check_host_files(host)
        cluster = self.cluster()
        if not _added_as_asked(cluster, host):  # else: a resumed run (see run)
            from ahvlite.cluster.inventory import host_conflicts

            host_conflicts(cluster, host)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cpulevel, cpustore, inventory
        from ahvlite.cluster.specwrite import read_spec

        p = self.params(ctx)
        host = host_entry(p)
        cluster = self.cluster()
        resumed = ctx.task.attempts > 1 and _added_as_asked(cluster, host)
        if not resumed:
            inventory.host_conflicts(cluster, host)

        def reachable() -> None:
            if not resumed:
                check_controller_files(host)
                inventory.check_reachable(host, trust_on_first_use=p.trust_on_first_use)

        ctx.progress(10, f"checking that {p.name} answers at {p.uri.split('?')[0]}")
        ctx.step("check", reachable)
        ctx.progress(40, f"planning the cluster CPU level with {p.name}")
        before = cluster.model_copy(update={"hosts": [h for h in cluster.hosts
                                                      if h.name != host.name]})
        plan = cpulevel.plan_from_dict(ctx.step("cpu-plan", lambda: cpulevel.plan_to_dict(
            cpulevel.plan_host_add(before, cpustore.store_for(cluster), host,
                                   strict=p.strict))))
        ctx.progress(60, f"recording {p.name} in cluster {cluster.name}")

        def join(spec: ClusterSpec) -> ClusterSpec | None:
            if _added_as_asked(spec, host):
                return None
            return inventory.with_host(spec, host)

        ctx.step("join", lambda: {"joined": self.change_spec(ctx, join)[1]})
        if plan.action == "lower":
            ctx.progress(80, "lowering the cluster CPU level")
        joined, _ = read_spec(self.state())
        assert joined is not None
        level = ctx.step("cpu-level", lambda: cpulevel.finish_host_add(
            joined, cpustore.store_for(joined), plan))
        return {**host.model_dump(mode="json"), "cluster": cluster.name, "cpu_level": level}


class HostRemoveParams(Params):
    name: str = HOST_FIELD
    force: bool = False


class HostRemove(SpecKind[HostRemoveParams]):
    """``host.remove``: refused while VMs run on the host (or while that cannot be
    checked, unless ``force``), then forgotten by compare-and-set. A resumed run whose
    host is already gone counts as done."""

    name = "host.remove"
    Params = HostRemoveParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import inventory

        p = self.params(ctx)
        cluster = self.cluster()
        if ctx.task.attempts > 1 and all(h.name != p.name for h in cluster.hosts):
            return {"removed": p.name, "cluster": cluster.name, "note": "already gone"}
        host = cluster.host(p.name)  # NotFound naming the hosts' command

        def check() -> None:
            if not p.force:
                inventory.check_no_running_vms(host)

        ctx.progress(20, f"checking that no VM runs on {p.name}")
        ctx.step("check", check)
        ctx.progress(60, f"removing {p.name} from cluster {cluster.name}")

        def forget(spec: ClusterSpec) -> ClusterSpec | None:
            if all(h.name != p.name for h in spec.hosts):
                return None
            return inventory.without_host(spec, p.name)

        ctx.step("forget", lambda: {"forgotten": self.change_spec(ctx, forget)[1]})
        return {"removed": p.name, "cluster": cluster.name}


KINDS = (HostAdd, HostRemove)
