"""Image import refuses images that name other files (qemu-img info on real files):
a backing file, an external data file, formats with extents. One line, exit 2, and
nothing uploaded (the pool is libvirt's test driver: any upload would fail anyway, so
refusing first is what these show)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.virt.imageinfo import inspect_image

pytestmark = pytest.mark.functional

CLUSTER = ("name: ti\nshared_pool: default-pool\n"
           "hosts:\n  - name: h1\n    uri: test:///default\n")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("img")
    qemu_img("create", "-f", "qcow2", str(d / "plain.qcow2"), "1M")
    qemu_img("create", "-f", "raw", str(d / "plain.raw"), "1M")
    qemu_img("create", "-f", "qcow2", "-b", str(d / "plain.qcow2"), "-F", "qcow2",
             str(d / "backed.qcow2"))
    # Backed by a host file it has no business reading (-u: qemu-img does not open it).
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw",
             str(d / "shadow.qcow2"), "1M")
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={d / 'data.raw'}",
             str(d / "datafile.qcow2"), "1M")
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat",
             str(d / "extents.vmdk"), "1M")
    qemu_img("create", "-f", "vpc", str(d / "other.vhd"), "1M")
    # A qcow2 with a backing file, named like a raw image.
    (d / "disguised.raw").write_bytes((d / "shadow.qcow2").read_bytes())
    return {p.name: p for p in d.iterdir()}


def test_self_contained_raw_and_qcow2_pass(images):
    assert inspect_image(images["plain.qcow2"]).format == "qcow2"
    info = inspect_image(images["plain.raw"])
    assert info.format == "raw" and info.virtual_size == 1024 * 1024


@pytest.mark.parametrize(("name", "needle"), [
    ("backed.qcow2", "backing file"), ("shadow.qcow2", "backing file"),
    ("disguised.raw", "backing file"), ("datafile.qcow2", "external data file"),
    ("extents.vmdk", "raw or qcow2"), ("other.vhd", "raw or qcow2"),
])
def test_images_naming_other_files_are_refused(images, name, needle):
    with pytest.raises(InvalidSpec) as err:
        inspect_image(images[name])
    assert err.value.field == "image" and needle in err.value.allowed


@pytest.mark.parametrize("name", ["backed.qcow2", "shadow.qcow2", "datafile.qcow2",
                                  "extents.vmdk", "disguised.raw"])
def test_the_cli_refuses_with_one_line_and_exit_2(images, tmp_path, name):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    env = {**os.environ, "AHVLITE_CLUSTER": str(cluster), "COLUMNS": "400"}
    r = subprocess.run([sys.executable, "-m", "ahvlite.cli.main", "image", "import",
                        str(images[name]), "evil"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: image=") and "Traceback" not in r.stderr
    assert len(lines) <= 2  # the error, and a hint saying what to do
