"""The task kinds the controller knows, each a handler of idempotent steps with typed
parameters (see ``base``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ahvlite.controller.kinds import cluster, drill, hosts, image, net, ops, template, vm
from ahvlite.controller.kinds.base import Kind, attempt_tag, cluster_host
from ahvlite.controller.kinds.vm import VM_UUID_NAMESPACE, create_once
from ahvlite.controller.tasks import Handler

KINDS: tuple[type[Kind[Any]], ...] = (*vm.KINDS, *hosts.KINDS, *net.KINDS, *cluster.KINDS,
                                      *ops.KINDS, *image.KINDS, *template.KINDS)

__all__ = ["KINDS", "VM_UUID_NAMESPACE", "Kind", "attempt_tag", "cluster_host", "create_once",
           "registry"]


def registry(cluster: Callable[[], Any] | None = None, *,
             drills: bool | None = None) -> dict[str, Handler]:
    """Every kind by name; ``cluster`` gives the controller's cluster (None: a
    submitter's registry, which checks the form of parameters only). Drill kinds
    (``sleep``, ``vm.create``) only with ``drills`` (default: $AHVLITE_DRILL_KINDS=1,
    as a lab's controllers have); without, their tasks fail with that reason."""
    if drills is None:
        drills = os.environ.get(drill.DRILL_ENV) == "1"
    kinds = (*KINDS, *(drill.KINDS if drills else map(drill.refused, drill.KINDS)))
    return {k.name: k(cluster) for k in kinds}
