"""The NoCloud seed ISO built in Python: what blkid and cloud-init look for."""

from __future__ import annotations

import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from ahvlite.virt.seediso import build_iso, nocloud_seed, read_iso


def test_blkid_sees_an_iso9660_filesystem_labelled_cidata(tmp_path):
    iso = tmp_path / "seed.iso"
    iso.write_bytes(nocloud_seed(instance_id="i-1", hostname="vm1", user_data="#cloud-config\n"))
    out = subprocess.run(["blkid", "-p", "-o", "export", str(iso)], capture_output=True,
                         text=True, check=True).stdout
    assert "TYPE=iso9660" in out.splitlines() and "LABEL=cidata" in out.splitlines()


def test_meta_data_and_user_data():
    label, files = read_iso(nocloud_seed(instance_id="abc", hostname="web1"))
    assert label == "cidata"
    assert files["meta-data"] == b"instance-id: abc\nlocal-hostname: web1\n"
    assert files["user-data"].startswith(b"#cloud-config\n")


@settings(max_examples=30)
@given(st.dictionaries(st.sampled_from(["user-data", "meta-data", "network-config",
                                        "vendor-data"]),
                       st.binary(max_size=5000), min_size=1))
def test_any_files_round_trip(files):
    image = build_iso(files)
    assert len(image) % 2048 == 0
    assert read_iso(image) == ("cidata", files)
