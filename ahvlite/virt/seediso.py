"""A cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata``, built in Python.

Plain ISO 9660 (level 1 layout, one root directory, no Rock Ridge or Joliet): the
Linux isofs driver shows ``USER-DATA;1`` as ``user-data``, which is what cloud-init's
NoCloud datasource reads. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

SECTOR = 2048
LABEL = "cidata"


def _both16(n: int) -> bytes:
    return struct.pack("<H", n) + struct.pack(">H", n)


def _both32(n: int) -> bytes:
    return struct.pack("<I", n) + struct.pack(">I", n)


def _dir_date(t: datetime) -> bytes:
    return bytes([t.year - 1900, t.month, t.day, t.hour, t.minute, t.second, 0])


def _vol_date(t: datetime) -> bytes:
    return t.strftime("%Y%m%d%H%M%S").encode() + b"00" + b"\0"


def _record(name: bytes, lba: int, size: int, *, directory: bool, t: datetime) -> bytes:
    length = 33 + len(name) + (1 - len(name) % 2)
    rec = (bytes([length, 0]) + _both32(lba) + _both32(size) + _dir_date(t)
           + bytes([2 if directory else 0, 0, 0]) + _both16(1) + bytes([len(name)]) + name)
    return rec + b"\0" * (length - len(rec))


def _iso_name(name: str) -> bytes:
    return (name.upper() + ";1").encode("ascii")


def build_iso(files: dict[str, bytes], *, label: str = LABEL,
              now: datetime | None = None) -> bytes:
    """An ISO 9660 image holding ``files`` (flat names) in its root directory."""
    t = now or datetime.now(UTC)
    names = sorted(files)
    # Layout: 16 system sectors, PVD (16), terminator (17), path tables (18, 19),
    # root directory (20), then each file from 21 on.
    root_lba = 20
    records_len = 34 + 34 + sum(33 + len(_iso_name(n)) + (1 - len(_iso_name(n)) % 2)
                                for n in names)
    root_sectors = -(-records_len // SECTOR)
    lba = root_lba + root_sectors
    placed: list[tuple[str, int]] = []
    for n in names:
        placed.append((n, lba))
        lba += max(1, -(-len(files[n]) // SECTOR))
    total = lba
    root_size = root_sectors * SECTOR

    root = _record(b"\0", root_lba, root_size, directory=True, t=t)
    root += _record(b"\1", root_lba, root_size, directory=True, t=t)
    for n, at in placed:
        root += _record(_iso_name(n), at, len(files[n]), directory=False, t=t)
    root = root.ljust(root_size, b"\0")

    path_l = bytes([1, 0]) + struct.pack("<I", root_lba) + struct.pack("<H", 1) + b"\0\0"
    path_m = bytes([1, 0]) + struct.pack(">I", root_lba) + struct.pack(">H", 1) + b"\0\0"

    def a(text: str, width: int) -> bytes:
        return text.encode("ascii").ljust(width, b" ")

    pvd = (bytes([1]) + b"CD001" + bytes([1, 0]) + a("LINUX", 32) + a(label, 32)
           + b"\0" * 8 + _both32(total) + b"\0" * 32 + _both16(1) + _both16(1)
           + _both16(SECTOR) + _both32(10) + struct.pack("<I", 18) + b"\0" * 4
           + struct.pack(">I", 19) + b"\0" * 4
           + _record(b"\0", root_lba, root_size, directory=True, t=t)
           + a("", 128) + a("", 128) + a("", 128) + a("AHVLITE", 128)
           + a("", 37) + a("", 37) + a("", 37)
           + _vol_date(t) + _vol_date(t) + b"0" * 16 + b"\0" + _vol_date(t)
           + bytes([1, 0]))
    pvd = pvd.ljust(SECTOR, b"\0")
    term = (bytes([255]) + b"CD001" + bytes([1])).ljust(SECTOR, b"\0")

    out = bytearray(SECTOR * 16)
    out += pvd + term + path_l.ljust(SECTOR, b"\0") + path_m.ljust(SECTOR, b"\0") + root
    for n, _at in placed:
        data = files[n]
        out += data + b"\0" * (max(1, -(-len(data) // SECTOR)) * SECTOR - len(data))
    assert len(out) == total * SECTOR
    return bytes(out)


def read_iso(image: bytes) -> tuple[str, dict[str, bytes]]:
    """(volume label, files) of an image :func:`build_iso` wrote (for checks and tests)."""
    pvd = image[16 * SECTOR:17 * SECTOR]
    if pvd[1:6] != b"CD001":
        raise ValueError("not an ISO 9660 image")
    label = pvd[40:72].decode("ascii").rstrip()
    root_lba = struct.unpack("<I", pvd[156 + 2:156 + 6])[0]
    root_size = struct.unpack("<I", pvd[156 + 10:156 + 14])[0]
    data = image[root_lba * SECTOR:root_lba * SECTOR + root_size]
    files: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        length = data[pos]
        lba, size = struct.unpack("<I", data[pos + 2:pos + 6])[0], struct.unpack(
            "<I", data[pos + 10:pos + 14])[0]
        name = data[pos + 33:pos + 33 + data[pos + 32]]
        if not data[pos + 25] & 2:
            files[name.decode().split(";")[0].lower()] = image[lba * SECTOR:lba * SECTOR + size]
        pos += length
    return label, files


def nocloud_seed(*, instance_id: str, hostname: str, user_data: str | None = None) -> bytes:
    """The NoCloud seed for one VM: meta-data (instance id, hostname) and user-data."""
    meta = f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"
    user = user_data if user_data is not None else f"#cloud-config\nhostname: {hostname}\n"
    return build_iso({"meta-data": meta.encode(), "user-data": user.encode()})
