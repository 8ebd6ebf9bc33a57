"""Host paths a VM spec names stay inside what the cluster owns (cluster/paths.py)."""

from __future__ import annotations

import os

import pytest

from ahvlite.cluster.paths import IMAGES_DIR, SERIAL_LOG_DIR, check_spec_paths, confine
from ahvlite.errors import InvalidSpec
from ahvlite.spec.vm import BootSpec, DiskSpec, VmSpec


@pytest.fixture
def pool(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    (d / "vmlinuz").write_text("k")
    (d / "escape").symlink_to("/etc/shadow")
    (d / "sub").mkdir()
    return d


def test_files_under_a_root_pass(pool):
    assert confine("boot.kernel", f"{pool}/vmlinuz", (str(pool),)) == f"{pool}/vmlinuz"
    assert confine("boot.kernel", f"{pool}/sub/not-yet", (str(pool),))
    assert confine("boot.kernel", f"{IMAGES_DIR}/vmlinuz", (IMAGES_DIR,))


@pytest.mark.parametrize("path", [
    "/etc/shadow", "relative/vmlinuz", "{pool}/../pool2/x", "{pool}/escape", "{pool}",
    "{pool}/sub/../../x", "{pool}x/vmlinuz", f"{IMAGES_DIR}/../secrets",
])
def test_everything_else_is_refused_naming_field_and_roots(pool, path):
    path = path.format(pool=pool)
    with pytest.raises(InvalidSpec) as err:
        confine("boot.kernel", path, (str(pool), IMAGES_DIR))
    assert err.value.field == "boot.kernel" and err.value.value == path
    assert f"{pool}/" in err.value.allowed and f"{IMAGES_DIR}/" in err.value.allowed


def test_a_symlinked_directory_cannot_lead_out(pool, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, pool / "link")
    with pytest.raises(InvalidSpec):
        confine("disks[0].path", f"{pool}/link/disk.qcow2", (str(pool),))


@pytest.mark.parametrize(("over", "field"), [
    ({"boot": BootSpec(kernel="/etc/shadow")}, "boot.kernel"),
    ({"boot": BootSpec(kernel="{pool}/vmlinuz", initrd="/root/x")}, "boot.initrd"),
    ({"disks": [DiskSpec(size_mib=1), DiskSpec(path="/dev/sda")]}, "disks[1].path"),
    ({"disks": [DiskSpec(path="{pool}/escape", cdrom=True)]}, "disks[0].path"),
    ({"serial_log": "/etc/cron.d/evil"}, "serial_log"),
    ({"serial_log": "{pool}/x.log"}, "serial_log"),
    ({"serial_log": f"{SERIAL_LOG_DIR}/../../../etc/x"}, "serial_log"),
])
def test_a_spec_is_checked_field_by_field(pool, over, field):
    def fill(v):
        if isinstance(v, str):
            return v.format(pool=pool)
        if isinstance(v, list):
            return [fill(x) for x in v]
        if hasattr(v, "model_dump"):
            return type(v)(**{k: fill(x) for k, x in v.model_dump().items()})
        return v

    spec = VmSpec(name="p", memory_mib=64, **{k: fill(v) for k, v in over.items()})
    with pytest.raises(InvalidSpec) as err:
        check_spec_paths(spec, pool)
    assert err.value.field == field


def test_a_spec_inside_the_roots_passes(pool):
    check_spec_paths(VmSpec(
        name="p", memory_mib=64, boot=BootSpec(kernel=f"{pool}/vmlinuz",
                                               initrd=f"{IMAGES_DIR}/initrd.img"),
        disks=[DiskSpec(path=f"{pool}/sub/seed.iso", cdrom=True)],
        serial_log=f"{SERIAL_LOG_DIR}/p-serial.log"), pool)
