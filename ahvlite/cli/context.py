"""Options every cluster command shares: which cluster file, and loading it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.errors import NotFound
from ahvlite.spec.cluster import ClusterSpec

ENV_VAR = "AHVLITE_CLUSTER"

ClusterOpt = Annotated[
    Path | None,
    typer.Option("--cluster", help=f"Cluster file (default: ${ENV_VAR}).", show_default=False),
]


def cluster_path(path: Path | None) -> Path:
    """``--cluster`` wins, then $AHVLITE_CLUSTER; otherwise a clear error."""
    if path is not None:
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    raise NotFound("no cluster file given",
                   hint=f"pass --cluster PATH or set {ENV_VAR} "
                        "(for a lab: eval \"$(ahvlite lab env)\")")


def load(path: Path | None) -> tuple[Path, ClusterSpec]:
    from ahvlite.cluster.legacy import open_cluster_file

    resolved = cluster_path(path)
    return resolved, open_cluster_file(resolved)
