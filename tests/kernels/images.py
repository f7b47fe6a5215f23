"""Debian guest images for the kernel matrix, built with mmdebstrap and cached by their inputs.

    images.py build SUITE [--cache DIR]     build (or reuse) the image of a Debian suite
    images.py list [--cache DIR]            show the cached images

An image is a directory in the cache: root.img (ext4, never written: guests boot on a qcow2
overlay), vmlinuz and initrd.img (taken from the rootfs), meta.json (kernel release, BCC
and headers package versions, build time). Its name ends with a hash of every input: the
suite, the mirror, the package list, this file, customize.sh and the SSH public key. A second
build with the same inputs reuses it; a change to any input builds a new one.

Standard library only, run as root. See docs/compatibility.md.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUSTOMIZE = HERE / "customize.sh"
DEFAULT_CACHE = os.environ.get("BPFLEET_KERNEL_CACHE", "/var/cache/bpfleet-kernels")
DEFAULT_MIRROR = os.environ.get("BPFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# Debian suites of the matrix and the stock kernel each one ships.
SUITES = {
    "bullseye": {"debian": "11", "kernel": "5.10"},
    "bookworm": {"debian": "12", "kernel": "6.1"},
    "trixie": {"debian": "13", "kernel": "6.12"},
}
PACKAGES = [
    "systemd-sysv", "udev", "kmod", "openssh-server", "python3", "python3-bpfcc", "iproute2",
    "initramfs-tools", "linux-image-amd64", "linux-headers-amd64",
]
# Free space left in the ext4 image on top of the rootfs (logs, pins, the agent, BCC's work).
FREE_SPACE_MB = 1024


class ImageError(Exception):
    pass


def progress(message: str) -> None:
    print(f"[kernels {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if result.returncode != 0:
        raise ImageError(f"failed (rc={result.returncode}): {' '.join(cmd)}\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return result


def controller_key(cache: Path) -> Path:
    """The SSH key baked into every image: made once per cache, so images stay reusable."""
    cache.mkdir(parents=True, exist_ok=True)
    key = cache / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpfleet-kernel-matrix", "-f", str(key)])
    return key


def image_inputs(suite: str, mirror: str, key: Path) -> dict:
    return {
        "suite": suite,
        "mirror": mirror,
        "packages": PACKAGES,
        "free_space_mb": FREE_SPACE_MB,
        "images.py": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "customize.sh": hashlib.sha256(CUSTOMIZE.read_bytes()).hexdigest(),
        "public_key": Path(str(key) + ".pub").read_text().strip(),
    }


def image_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def image_dir(cache: Path, suite: str, mirror: str = DEFAULT_MIRROR) -> Path:
    key = controller_key(cache)
    return cache / f"{suite}-{image_key(image_inputs(suite, mirror, key))}"


def load_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if all((directory / name).exists() for name in ("root.img", "vmlinuz", "initrd.img")):
        return meta
    return None


def dpkg_version(rootdir: Path, package: str) -> str:
    result = subprocess.run(["dpkg-query", f"--admindir={rootdir}/var/lib/dpkg", "-W", "-f=${Version}", package],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip()


def build(suite: str, cache: Path, mirror: str = DEFAULT_MIRROR) -> dict:
    """Return the meta of the suite's image, building it when the cache has none for these inputs."""
    if suite not in SUITES:
        raise ImageError(f"unknown suite {suite}: one of {', '.join(SUITES)}")
    for tool in ("mmdebstrap", "mkfs.ext4", "ssh-keygen"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise ImageError(f"{tool} not found (apt install mmdebstrap e2fsprogs openssh-client)")
    key = controller_key(cache)
    inputs = image_inputs(suite, mirror, key)
    target = cache / f"{suite}-{image_key(inputs)}"
    with open(cache / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two checkouts building the same suite build it once
        meta = load_meta(target)
        if meta:
            progress(f"build {suite}: cached image {target.name} (kernel {meta['kernel_release']}), 0 s")
            return dict(meta, image_dir=str(target), cached=True)
        return dict(_build(suite, mirror, key, inputs, target), image_dir=str(target), cached=False)


def unmount_under(directory: Path) -> None:
    """Unmount what a failed mmdebstrap left mounted in its rootfs (proc, sys, dev/pts, dev/shm).

    Never delete a build directory before this: rmtree would walk into those mounts.
    """
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as handle:
        points = [line.split()[1].replace("\\040", " ") for line in handle]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = [p for p in points if p.startswith(prefix) and os.path.ismount(p)]
    if left:
        raise ImageError(f"cannot unmount {left}: remove {directory} by hand")


def remove_build_dir(directory: Path) -> None:
    if directory.exists():
        unmount_under(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _build(suite: str, mirror: str, key: Path, inputs: dict, target: Path) -> dict:
    work = target.with_name(target.name + ".building")
    remove_build_dir(work)
    work.mkdir(parents=True)
    try:
        return _build_in(suite, mirror, key, inputs, target, work)
    except BaseException:
        remove_build_dir(work)
        raise


def _build_in(suite: str, mirror: str, key: Path, inputs: dict, target: Path, work: Path) -> dict:
    rootdir = work / "rootfs"
    started = time.monotonic()
    progress(f"build {suite}: mmdebstrap from {mirror} ({len(PACKAGES)} packages and their dependencies)")
    shutil.copy(str(key) + ".pub", work / "authorized_key")
    run(["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory", "--skip=cleanup/apt/lists",
         "--include=" + ",".join(PACKAGES),
         f"--customize-hook=sh {CUSTOMIZE} \"$1\" {work / 'authorized_key'}",
         suite, str(rootdir), mirror], timeout=1800)
    debootstrapped = time.monotonic() - started
    progress(f"build {suite}: rootfs done in {debootstrapped:.0f} s")
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (rootdir / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"expected one kernel in {rootdir}/boot, found {kernels}")
    release = kernels[0]
    shutil.copy(rootdir / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
    shutil.copy(rootdir / "boot" / f"initrd.img-{release}", work / "initrd.img")
    meta = {
        "suite": suite,
        "debian": SUITES[suite]["debian"],
        "kernel_release": release,
        "kernel_package": dpkg_version(rootdir, f"linux-image-{release}"),
        "headers_package": f"linux-headers-{release}",
        "headers_version": dpkg_version(rootdir, f"linux-headers-{release}"),
        "bcc_version": dpkg_version(rootdir, "python3-bpfcc"),
        "python_version": dpkg_version(rootdir, "python3"),
        "inputs": inputs,
    }
    used_mb = int(run(["du", "-sm", "--apparent-size", str(rootdir)]).stdout.split()[0])
    size_mb = used_mb + used_mb // 5 + FREE_SPACE_MB
    progress(f"build {suite}: mkfs.ext4 -d ({used_mb} MB of files, {size_mb} MB image)")
    image = work / "root.img"
    run(["mkfs.ext4", "-q", "-F", "-L", "bpfleet-root", "-E", "lazy_itable_init=1,lazy_journal_init=1",
         "-d", str(rootdir), str(image), f"{size_mb}M"])
    shutil.rmtree(rootdir)
    meta["build_seconds"] = round(time.monotonic() - started, 1)
    meta["mmdebstrap_seconds"] = round(debootstrapped, 1)
    meta["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (work / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    progress(f"build {suite}: image {target.name} built in {meta['build_seconds']:.0f} s "
             f"(kernel {release}, BCC {meta['bcc_version']})")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f"image cache directory (default {DEFAULT_CACHE})")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("suites", nargs="+", choices=sorted(SUITES))
    sub.add_parser("list")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    try:
        if args.command == "build":
            for suite in args.suites:
                meta = build(suite, cache, args.mirror)
                print(json.dumps({k: v for k, v in meta.items() if k != "inputs"}, sort_keys=True))
        else:
            for directory in sorted(cache.glob("*-*")):
                meta = load_meta(directory)
                if meta:
                    print(f"{directory.name}\t{meta['kernel_release']}\tBCC {meta['bcc_version']}\t"
                          f"built {meta['built_at']} in {meta['build_seconds']} s")
    except ImageError as exc:
        print(f"images.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
