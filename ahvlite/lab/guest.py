"""The lab's test guest, built from Debian packages at setup time.

The lab needs a tiny VM that boots in seconds, takes a fixed address, answers ping and
can dirty its own memory on demand (to exercise live migration). Nothing binary is
committed to the repository: :func:`build_guest` downloads Debian's cloud kernel and
``busybox-static`` with ``apt-get download`` (the kernel is never installed on the host),
writes a busybox initramfs around an ``/init`` shell script kept in this module, and
puts the same kernel and initramfs on a small BIOS-bootable disk.

Outputs (all in ``cache_dir``, which this module owns):

* ``vmlinuz``     Debian's cloud kernel, for direct kernel boot (``-kernel``/``<kernel>``);
* ``initrd.img``  the initramfs (newc cpio, gzip);
* ``disk.qcow2``  a FAT "superfloppy" (no partition table) made bootable by syslinux,
  holding both of the above. It boots with UEFI (OVMF) too: systemd-boot (Debian's
  ``systemd-boot-efi``) is the removable-media loader ``/EFI/BOOT/BOOTX64.EFI`` with
  one entry for the same kernel, initramfs and command line. (Under OVMF the guest
  needs about 160 MiB of memory; 128 MiB is enough with SeaBIOS.) Treat it as a
  read-only base image: give each VM its own overlay
  (``qemu-img create -f qcow2 -F qcow2 -b disk.qcow2 vm.qcow2``).

What the guest does at boot is configured from outside, by the kernel command line
(``ahvlite.KEY=VALUE``) or by QEMU fw_cfg entries ``opt/ahvlite/KEY`` (libvirt
``<sysinfo type='fwcfg'><entry name='opt/ahvlite/KEY'>VALUE</entry></sysinfo>``):

* ``ip``       ``ADDR/PREFIX`` for eth0; without it the guest runs DHCP;
* ``gw``       optional default gateway, taken from the same source as ``ip``;
* ``hostname`` default ``guest``;
* ``dirty``    ``N`` > 0: rewrite N MiB of guest RAM every second.

It reports on the serial console (ttyS0) with single machine-readable lines::

    AHVLITE-DIRTY mib_per_s=4                          (only with dirty)
    AHVLITE-GUEST-READY ip=10.0.0.5/24 hostname=g1     (ip=dhcp after a first lease)

READY comes once, and last: when it shows, everything else is set up.

Host tools needed (Debian packages): apt, dpkg, kmod, dosfstools, mtools, syslinux,
qemu-utils. Downloaded (never installed): the kernel, busybox-static, systemd-boot-efi.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ahvlite.errors import MissingDependency, OperationFailed
from ahvlite.lab.guest_init import (
    INIT_SCRIPT,
    SYSLINUX_CFG,
    SYSTEMD_BOOT_ENTRY,
    SYSTEMD_BOOT_LOADER_CONF,
    UDHCPC_SCRIPT,
)

__all__ = [
    "BUSYBOX_PACKAGE",
    "GUEST_MODULES",
    "KERNEL_META_PACKAGE",
    "READY_MARKER",
    "GuestImages",
    "build_guest",
]

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
SYSTEMD_BOOT_PACKAGE = "systemd-boot-efi"  # the UEFI loader on the disk image

# What the lab guest needs from the kernel: virtio NIC and disks (PCI transport), the
# SCSI disk driver behind virtio-scsi, fw_cfg so the guest can read its address, and
# the memory balloon (overcommitted VMs give memory back through it).
# Their dependencies are added from modules.dep.
# 8021q: trunk-mode guests make tagged sub-interfaces (eth0.20) to reach tagged VLANs.
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_scsi", "virtio_blk", "sd_mod", "qemu_fw_cfg",
                 "virtio_balloon", "8021q")

READY_MARKER = "AHVLITE-GUEST-READY"

DISK_SIZE_MIB = 64

# Bumped whenever the way the images are put together changes, so old caches rebuild.
BUILD_FORMAT = 2  # 2: the disk also boots with UEFI (systemd-boot)

_STAMP = "stamp.json"
_OUTPUTS = ("vmlinuz", "initrd.img", "disk.qcow2")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

_EFI_LOADER = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@dataclass(frozen=True)
class GuestImages:
    kernel: Path  # vmlinuz of Debian's cloud kernel
    initrd: Path  # busybox initramfs (cpio.gz) built by us
    disk: Path  # bootable qcow2 disk (BIOS boot via syslinux) holding the same kernel+initrd


@dataclass(frozen=True)
class _Package:
    name: str
    version: str


def build_guest(cache_dir: Path, *, force: bool = False) -> GuestImages:
    """Build (or reuse) the guest images in ``cache_dir``.

    Reuses the existing outputs when the stamp file records the same inputs: the package
    versions apt would pick now, and the text of the scripts baked into the images.
    Raises OperationFailed when a host tool is missing (naming its Debian package) or a
    step fails.
    """
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    images = GuestImages(
        kernel=cache_dir / "vmlinuz", initrd=cache_dir / "initrd.img", disk=cache_dir / "disk.qcow2"
    )
    with _locked(cache_dir / ".lock"):
        kernel_pkg, busybox_pkg = _resolve_packages()
        boot_pkg = _resolve_boot_package()
        inputs = _stamp_inputs(kernel_pkg, busybox_pkg, boot_pkg)
        if not force and _is_current(cache_dir, inputs):
            return images
        _check_host_tools()
        _remove_leftovers(cache_dir)
        debs = cache_dir / "debs"
        kernel_deb = _download(kernel_pkg, debs)
        busybox_deb = _download(busybox_pkg, debs)
        boot_deb = _download(boot_pkg, debs)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cache_dir) as tmp:
            work = Path(tmp)
            details = _build_into(work, kernel_deb, busybox_deb, boot_deb)
            _publish(work, cache_dir, {"inputs": inputs, **details})
        # Kernel updates would otherwise pile up 27 MB .debs forever.
        for deb in debs.glob("*.deb"):
            if deb not in (kernel_deb, busybox_deb, boot_deb):
                deb.unlink()
    return images


def _remove_leftovers(cache_dir: Path) -> None:
    # Scratch dirs of a build that was killed; safe to delete while we hold the lock.
    for stale in (*cache_dir.glob(".build-*"), *cache_dir.glob("debs/.download-*")):
        shutil.rmtree(stale, ignore_errors=True)


# --- stamp and publishing -------------------------------------------------------------


def _stamp_inputs(kernel: _Package, busybox: _Package, boot: _Package) -> dict[str, object]:
    text = "\0".join((INIT_SCRIPT, UDHCPC_SCRIPT, SYSLINUX_CFG, SYSTEMD_BOOT_LOADER_CONF,
                      SYSTEMD_BOOT_ENTRY, *GUEST_MODULES))
    return {
        "format": BUILD_FORMAT,
        "kernel": {"package": kernel.name, "version": kernel.version},
        "busybox": {"package": busybox.name, "version": busybox.version},
        "systemd_boot": {"package": boot.name, "version": boot.version},
        "scripts_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "disk_mib": DISK_SIZE_MIB,
    }


def _is_current(cache_dir: Path, inputs: Mapping[str, object]) -> bool:
    if not all((cache_dir / name).is_file() for name in _OUTPUTS):
        return False
    try:
        stamp = json.loads((cache_dir / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("inputs") == inputs


def _publish(work: Path, cache_dir: Path, stamp: Mapping[str, object]) -> None:
    # The stamp goes first and comes back last, so a crash half-way through leaves a
    # cache that is rebuilt rather than one whose files do not match its stamp.
    (cache_dir / _STAMP).unlink(missing_ok=True)
    for name in _OUTPUTS:
        os.replace(work / name, cache_dir / name)
    (work / _STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(work / _STAMP, cache_dir / _STAMP)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two lab commands may set up at once; the second waits and then finds a fresh stamp.
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- host tools -------------------------------------------------------------------------

# tool -> Debian package that ships it
_HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "syslinux": "syslinux",
    "qemu-img": "qemu-utils",
}


def _tool(name: str) -> str:
    # depmod and mkfs.fat live in sbin, which a non-login root shell may not have on PATH.
    path = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
    found = shutil.which(name, path=path)
    if found is None:
        package = _HOST_TOOLS.get(name, name)
        raise MissingDependency(
            f"{name} not found: the lab guest build needs the Debian package {package}",
            hint=f"run `make setup`, or `apt-get install -y {package}`")
    return found


def _check_host_tools() -> None:
    # Fail before downloading 30 MB rather than half-way through the build.
    for name in _HOST_TOOLS:
        _tool(name)


def _run(argv: list[str], *, env: Mapping[str, str] | None = None) -> str:
    argv = [_tool(argv[0]), *argv[1:]]
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise OperationFailed(f"{' '.join(argv)} failed ({proc.returncode}): {detail}")
    return proc.stdout


# --- packages ---------------------------------------------------------------------------


def _apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """Package name -> control fields of the version apt would install now.

    One apt-cache run for everything: it re-reads all package lists each time (several
    tenths of a second where apt keeps no pkgcache.bin, as in Debian's docker images),
    and this runs on every build_guest call, even when nothing is rebuilt.
    """
    # --no-all-versions: only the candidate, not every version the lists know.
    _tool("apt-cache")
    try:
        out = _run(["apt-cache", "show", "--no-all-versions", *packages])
    except OperationFailed as exc:
        raise OperationFailed(
            f"apt does not know {' or '.join(packages)} (run apt-get update first?): {exc}"
        ) from exc
    records: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue  # continuation lines of Description and the like
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            records.setdefault(fields["Package"], fields)
    missing = [package for package in packages if package not in records]
    if missing:
        raise OperationFailed(f"apt-cache show gave no candidate for {', '.join(missing)}")
    return records


def _resolve_packages() -> tuple[_Package, _Package]:
    """(the versioned linux-image-X-cloud-amd64 the meta package points at, busybox)."""
    records = _apt_show(KERNEL_META_PACKAGE, BUSYBOX_PACKAGE)
    busybox = _Package(BUSYBOX_PACKAGE, records[BUSYBOX_PACKAGE]["Version"])
    depends = records[KERNEL_META_PACKAGE].get("Depends", "")
    for alternative in re.split(r"[,|]", depends):
        match = re.match(r"\s*(linux-image-\S+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", alternative)
        if match and match.group(1) != KERNEL_META_PACKAGE:
            name, version = match.group(1), match.group(2)
            if not version:  # the meta package normally pins it with (= VERSION)
                version = _apt_show(name)[name]["Version"]
            return _Package(name, version), busybox
    raise OperationFailed(f"{KERNEL_META_PACKAGE} depends on no linux-image package: {depends!r}")


def _resolve_boot_package() -> _Package:
    records = _apt_show(SYSTEMD_BOOT_PACKAGE)
    return _Package(SYSTEMD_BOOT_PACKAGE, records[SYSTEMD_BOOT_PACKAGE]["Version"])


def _deb_identity(deb: Path) -> tuple[str, str]:
    out = _run(["dpkg-deb", "--showformat=${Package}\\n${Version}\\n", "--show", str(deb)])
    name, version = out.splitlines()[:2]
    return name, version


def _download(package: _Package, debs: Path) -> Path:
    """The .deb of exactly this version, downloading it unless it is already cached."""
    debs.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob(f"{package.name}_*.deb")):
        try:
            if _deb_identity(deb) == (package.name, package.version):
                return deb
        except OperationFailed:  # truncated or corrupt: fetch it again
            deb.unlink()
    # Into a scratch dir first: apt-get download leaves partial files when interrupted.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        proc = subprocess.run(
            [_tool("apt-get"), "download", f"{package.name}={package.version}"],
            cwd=tmp, capture_output=True, text=True, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        found = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(found) != 1:
            raise OperationFailed(
                f"apt-get download {package.name}={package.version} failed: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        target = debs / found[0].name
        os.replace(found[0], target)
    return target


def _extract(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


# --- kernel modules ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Kernel:
    release: str  # uname -r
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>


def _find_kernel(root: Path) -> _Kernel:
    vmlinuzes = sorted((root / "boot").glob("vmlinuz-*"))
    if len(vmlinuzes) != 1:
        raise OperationFailed(f"expected one boot/vmlinuz-* in the kernel package, got {vmlinuzes}")
    release = vmlinuzes[0].name.removeprefix("vmlinuz-")
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if (base / release).is_dir():
            return _Kernel(release, vmlinuzes[0], base / release)
    raise OperationFailed(f"no modules directory for {release} in the kernel package")


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    # The kernel treats - and _ in module names as the same character.
    return base.replace("-", "_")


def _ensure_modules_dep(root: Path, kernel: _Kernel) -> Path:
    dep = kernel.modules_dir / "modules.dep"
    if dep.is_file():
        return dep
    # Debian's kernel packages do not ship modules.dep: postinst runs depmod. Run it on
    # the extracted tree instead (depmod -b reads BASE/lib/modules/RELEASE).
    lib_modules = root / "lib" / "modules"
    if not lib_modules.exists():
        (root / "lib").mkdir(exist_ok=True)
        lib_modules.symlink_to(kernel.modules_dir.parent)
    _run(["depmod", "-b", str(root), kernel.release])
    if not dep.is_file():
        raise OperationFailed(f"depmod did not write {dep}")
    return dep


def _parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """module name -> (path relative to the modules dir, names of its dependencies)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        table[_module_name(path)] = (path.strip(), [_module_name(d) for d in deps.split()])
    return table


def _parse_builtin(text: str) -> set[str]:
    return {_module_name(line) for line in text.split() if line}


def _load_order(
    wanted: Iterable[str], deps: Mapping[str, tuple[str, list[str]]], builtin: set[str]
) -> tuple[list[str], list[str]]:
    """(loadable modules, dependencies first; built-in ones that need no loading)."""
    order: list[str] = []
    skipped: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in skipped:
            return
        if name in builtin:
            skipped.append(name)
            return
        if name not in deps:
            raise OperationFailed(f"kernel module {name} is neither in modules.dep nor built in")
        if name in visiting:
            raise OperationFailed(f"dependency cycle through kernel module {name}")
        visiting.add(name)
        for dep in deps[name][1]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(_module_name(name))
    return order, skipped


def _read_module(path: Path) -> bytes:
    """The plain .ko: busybox insmod cannot load compressed modules."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        # Python 3.11 has no zstd; the zstd tool is the one thing we shell out for.
        if shutil.which("zstd") is None:
            raise OperationFailed(f"{name} is zstd-compressed: install the Debian package zstd")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    raise OperationFailed(f"unknown kernel module format: {path}")


# --- initramfs --------------------------------------------------------------------------


class _Cpio:
    """A newc ("070701") archive, written by hand so that /dev/console can be a real
    device node without root, and the bytes do not depend on the build host's clock or
    users."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 0

    def _entry(
        self, name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._chunks += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _initramfs(busybox: bytes, modules: Mapping[str, bytes]) -> bytes:
    cpio = _Cpio()
    for directory in (
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp",
        "etc", "etc/ahvlite", "lib", "lib/modules", "root",
    ):  # fmt: skip
        cpio.directory(directory)
    # The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("etc/hostname", b"guest\n")
    cpio.file("etc/ahvlite/modules", "".join(f"{name}\n" for name in modules).encode())
    for name, data in modules.items():
        cpio.file(f"lib/modules/{name}.ko", data)
    # mtime=0 and a fixed level keep the gzip stream reproducible.
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


# --- disk -------------------------------------------------------------------------------


def _make_disk(raw: Path, qcow2: Path, vmlinuz: Path, initrd: Path, work: Path,
               efi_loader: Path) -> None:
    # A FAT filesystem across the whole disk, no partition table: SeaBIOS runs sector 0
    # of a hard disk whatever it holds, and syslinux makes that its FAT boot sector
    # (checked on virtio-scsi with SeaBIOS 1.16). mtools instead of loop mounts, which
    # containers often cannot have; the syslinux installer works through mtools too.
    with open(raw, "wb") as handle:
        handle.truncate(DISK_SIZE_MIB * 1024 * 1024)
    # Fixed volume id: otherwise mkfs.fat takes one from the clock.
    _run(["mkfs.fat", "-F", "16", "-n", "AHVLITE", "-i", "41485631", str(raw)])
    cfg = work / "syslinux.cfg"
    cfg.write_text(SYSLINUX_CFG)
    # mtools refuses images whose geometry it finds odd; a file has no real geometry.
    mtools_env = {"MTOOLS_SKIP_CHECK": "1"}
    for source, target in ((vmlinuz, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        _run(["mcopy", "-i", str(raw), str(source), f"::/{target}"], env=mtools_env)
    # UEFI: OVMF's FAT driver takes the whole (partitionless) disk as a filesystem and
    # its boot manager starts the removable-media path /EFI/BOOT/BOOTX64.EFI.
    (work / "loader.conf").write_text(SYSTEMD_BOOT_LOADER_CONF)
    (work / "ahvlite.conf").write_text(SYSTEMD_BOOT_ENTRY)
    _run(["mmd", "-i", str(raw), "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"],
         env=mtools_env)
    for source, target in ((efi_loader, "EFI/BOOT/BOOTX64.EFI"),
                           (work / "loader.conf", "loader/loader.conf"),
                           (work / "ahvlite.conf", "loader/entries/ahvlite.conf")):
        _run(["mcopy", "-i", str(raw), str(source), f"::/{target}"], env=mtools_env)
    _run(["syslinux", "--install", str(raw)], env=mtools_env)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
    raw.unlink()


# --- the build --------------------------------------------------------------------------


def _build_into(work: Path, kernel_deb: Path, busybox_deb: Path,
                boot_deb: Path) -> dict[str, object]:
    """Writes the outputs into ``work``; returns what the stamp records about them."""
    kernel_root = _extract(kernel_deb, work / "kernel")
    busybox_root = _extract(busybox_deb, work / "busybox")
    boot_root = _extract(boot_deb, work / "systemd-boot")
    efi_loader = boot_root / _EFI_LOADER
    if not efi_loader.is_file():
        raise OperationFailed(f"{boot_deb.name} has no {_EFI_LOADER}")
    kernel = _find_kernel(kernel_root)

    deps = _parse_modules_dep(_ensure_modules_dep(kernel_root, kernel).read_text())
    builtin_file = kernel.modules_dir / "modules.builtin"
    builtin = _parse_builtin(builtin_file.read_text()) if builtin_file.is_file() else set()
    order, skipped = _load_order(GUEST_MODULES, deps, builtin)
    modules = {name: _read_module(kernel.modules_dir / deps[name][0]) for name in order}

    busybox = busybox_root / "bin" / "busybox"
    if not busybox.is_file():
        raise OperationFailed(f"{busybox_deb.name} has no bin/busybox")

    shutil.copyfile(kernel.vmlinuz, work / "vmlinuz")
    (work / "initrd.img").write_bytes(_initramfs(busybox.read_bytes(), modules))
    _make_disk(work / "disk.raw", work / "disk.qcow2", work / "vmlinuz", work / "initrd.img", work,
               efi_loader)

    shutil.rmtree(kernel_root)
    shutil.rmtree(busybox_root)
    shutil.rmtree(boot_root)
    return {"kernel_release": kernel.release, "modules": order, "modules_builtin": skipped}
