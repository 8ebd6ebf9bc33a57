"""The annotated cluster file the README points at stays a file `cluster apply` takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ahvlite.cluster.hostfiles import check_host_files
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec, load_cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "cluster.example.yaml"


def test_the_example_loads_and_names_only_controller_files():
    spec = load_cluster(EXAMPLE)
    assert [h.name for h in spec.hosts] == ["h1", "h2", "h3"]
    assert spec.pool is not None and spec.pool.kind == "netfs"
    assert {n.vlan for n in spec.network.networks} == {10, 20}
    for host in spec.hosts:
        check_host_files(host)  # under /etc/ahvlite or /etc/pki: raises otherwise


def test_a_typo_in_the_example_is_refused_by_name():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["hosts"][0]["sshh"] = raw["hosts"][0].pop("ssh")
    with pytest.raises((InvalidSpec, ValueError)) as exc:
        ClusterSpec.model_validate(raw)
    assert "sshh" in str(exc.value)
