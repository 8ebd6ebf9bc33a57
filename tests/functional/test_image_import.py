"""Image import: the CLI sends the file to the leader, whose ``image.import`` task
refuses images that name other files (qemu-img info on real files: a backing file, an
external data file, formats with extents) before anything reaches the pool, uploads the
rest with its catalogue record, and removes the staged file either way. The pool is
libvirt's test driver, which has no volume upload: a stand-in makes the volume where
the rest of the import is under test."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt import storage
from ahvlite.virt.conn import connection
from ahvlite.virt.imageinfo import inspect_image
from tests.apicluster import api_cluster
from tests.taskrecords import ended, put_resumed, resumed_id

pytestmark = pytest.mark.functional

POOL = "default-pool"
SPEC = ClusterSpec(name="ti", shared_pool=POOL, hosts=[HostSpec(name="h1",
                                                                uri="test:///default")])


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


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    # test:///default keeps its state only while a connection to it is open.
    with connection("test:///default"), \
            api_cluster(tmp_path_factory.mktemp("ti"), SPEC) as c:
        yield c


def staged(api) -> list[str]:
    d = api.dir / "uploads"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def pool_volumes() -> dict[str, storage.VolumeInfo]:
    with connection("test:///default") as conn:
        return {v.name: v for v in storage.list_volumes(storage.lookup_pool(conn, POOL))}


@pytest.mark.parametrize("name", ["backed.qcow2", "shadow.qcow2", "datafile.qcow2",
                                  "extents.vmdk", "disguised.raw"])
def test_the_cli_refuses_with_one_line_and_exit_2(images, api, name):
    r = api.cli("image", "import", str(images[name]), "evil", extra_env={"COLUMNS": "400"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: image=") and "Traceback" not in r.stderr
    assert len(lines) <= 2  # the error, and a hint saying what to do
    # Inspected on the leader before anything reached the pool; nothing stays.
    assert "image-evil" not in pool_volumes() and api.state.doc("images", "evil") is None
    assert staged(api) == []


def test_an_upload_the_pool_refuses_is_undone(images, api):
    # The test driver has no volume upload: the import fails after its record was made.
    r = api.cli("image", "import", str(images["plain.qcow2"]), "nostream")
    assert r.returncode != 0 and "not supported" in r.stderr and "Traceback" not in r.stderr
    assert "image-nostream" not in pool_volumes()
    assert api.state.doc("images", "nostream") is None and staged(api) == []


@pytest.fixture
def stream_upload(monkeypatch):
    """A stand-in for libvirt's volume upload, which the test driver lacks: the volume
    is made with the file's size (what the rest of the import then looks at)."""
    made: list[str] = []

    def upload(conn, pool, name, source, *, report=None, fmt=None):
        size = source.stat().st_size
        if report:
            report(size // 2, size)
            report(size, size)
        made.append(name)
        return storage.create_volume(pool, name, max(1, size >> 20))

    monkeypatch.setattr(storage, "upload_volume", upload)
    return made


def _forget(api, name: str) -> None:
    with connection("test:///default") as conn:
        storage.delete_volume(storage.lookup_pool(conn, POOL), f"image-{name}")
    api.state.delete_doc("images", name)


def test_import_records_the_catalogue_and_removes_the_staged_file(images, api,
                                                                  stream_upload):
    path = images["plain.qcow2"]
    try:
        r = api.cli("image", "import", str(path), "base", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["image"] == "base" and doc["state"] == "ready"
        assert doc["format"] == "qcow2" and doc["virtual_size"] == 1024 * 1024
        assert doc["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert doc["submitted_by"] == "cert:admin" and doc["imported_at"]
        assert stream_upload == ["image-base"] and "image-base" in pool_volumes()
        assert api.state.doc("images", "base")["sha256"] == doc["sha256"]
        assert staged(api) == []
        listed = {i["image"]: i for i in json.loads(api.cli("image", "list", "--json").stdout)}
        assert listed["base"]["sha256"] == doc["sha256"] and listed["base"]["state"] == "ready"
        human = api.cli("image", "list")
        assert human.returncode == 0 and doc["sha256"][:12] in human.stdout
        # A name in use is refused before anything is sent.
        again = api.cli("image", "import", str(images["plain.raw"]), "base")
        assert again.returncode == 4 and "already exists" in again.stderr
        assert stream_upload == ["image-base"] and staged(api) == []
    finally:
        _forget(api, "base")


def test_a_resumed_import_uploads_again_over_a_half_made_volume(images, api,
                                                                stream_upload):
    # The dead leader reserved the name, inspected the file and began the upload.
    task_id = resumed_id()
    upload = "0123456789abcdef0123456789abcdef"
    (api.dir / "uploads").mkdir(exist_ok=True)
    shutil.copy(images["plain.raw"], api.dir / "uploads" / upload)
    api.state.create_doc("images", "half", {"name": "half", "state": "importing",
                                            "task": task_id})
    with connection("test:///default") as conn:
        storage.create_volume(storage.lookup_pool(conn, POOL), "image-half", 7)
    info = {"format": "raw", "virtual_size": 1024 * 1024,
            "sha256": hashlib.sha256(images["plain.raw"].read_bytes()).hexdigest()}
    try:
        end = ended(api.coord, put_resumed(api.coord, "image.import",
                                           {"upload": upload, "name": "half"},
                                           task_id=task_id,
                                           steps_done={"reserve": True, "inspect": info}))
        assert end.state == "succeeded", end.error
        assert stream_upload == ["image-half"]  # once, after the half volume went
        assert pool_volumes()["image-half"].capacity_mib == 1
        assert api.state.doc("images", "half")["state"] == "ready" and staged(api) == []
    finally:
        _forget(api, "half")


def test_an_import_never_takes_another_tasks_name(images, api, stream_upload):
    api.state.create_doc("images", "busy", {"name": "busy", "state": "importing",
                                            "task": "0000000000001-other"})
    try:
        r = api.cli("image", "import", str(images["plain.raw"]), "busy")
        assert r.returncode == 4 and "already exists" in r.stderr
        assert api.state.doc("images", "busy")["task"] == "0000000000001-other"
        assert stream_upload == [] and staged(api) == []
    finally:
        api.state.delete_doc("images", "busy")
