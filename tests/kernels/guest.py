"""Boot a kernel-matrix image in qemu (TCG) on a lab fleet's bridge, reachable over SSH.

The guest's virtio-net NIC is a tap device created inside the fleet's switch namespace and
enslaved to its bridge, and qemu itself runs in that namespace: the guest sits on the lab
network like any namespace host, and the root namespace gets no address on it. It boots
Debian's own kernel and initramfs from the image on a qcow2 overlay, so the cached image is
never written. The controller reaches it with the lab's SSH ProxyCommand.

KVM is not used: on the project's machines /dev/kvm exists but guests hang under it (no
usable nested virtualization), so qemu runs with TCG.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fleet"))
import bpfleet_lab  # noqa: E402

GUEST_IFACE = "eth0"
BOOT_TIMEOUT = float(os.environ.get("BPFLEET_GUEST_BOOT_TIMEOUT", "300"))


class GuestError(Exception):
    pass


def progress(message: str) -> None:
    print(f"[kernels {time.strftime('%H:%M:%S')}] {message}", flush=True)


def guest_addresses(index: int) -> dict:
    """Guest number index (1..9) of a fleet: addresses above the namespace hosts' ones."""
    last = 200 + index
    return {
        "ipv4": f"{bpfleet_lab.NET_V4}.{last}",
        "ipv6": f"{bpfleet_lab.NET_V6}:{last}",
        "mac": f"02:62:66:6c:01:{index:02x}",
    }


class Guest:
    def __init__(self, lab_name: str, image: dict, run_dir: Path, index: int = 1, smp: int = 2,
                 memory_mb: int = 2048) -> None:
        self.lab_name = lab_name
        self.image = image
        self.image_dir = Path(image["image_dir"])
        self.run_dir = run_dir
        self.index = index
        self.smp = smp
        self.memory_mb = memory_mb
        self.addresses = guest_addresses(index)
        self.tap = f"bktap{index}"
        self.switch = bpfleet_lab.switch_netns(lab_name)
        self.key = self.image_dir.parent / "id_ed25519"
        self.process: subprocess.Popen | None = None
        self.console = run_dir / "console.log"
        self.control_dir = run_dir / "cp"

    # ------------------------------------------------------------ ssh

    def ssh_options(self) -> list[str]:
        return [
            f"ProxyCommand={bpfleet_lab.proxy_command(self.lab_name)}",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
            "ConnectTimeout=30",
            "ServerAliveInterval=15",
            "ControlMaster=auto",
            "ControlPersist=120s",
            f"ControlPath={self.control_dir}/%h",
        ]

    def ssh_argv(self, *remote: str) -> list[str]:
        argv = ["ssh", "-i", str(self.key)]
        for option in self.ssh_options():
            argv += ["-o", option]
        return [*argv, f"root@{self.addresses['ipv4']}", "--", *remote]

    def ssh(self, command: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise GuestError(f"ssh {self.addresses['ipv4']} {command!r} failed (rc={result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def copy_to(self, source: Path, dest: str) -> None:
        argv = ["scp", "-q", "-i", str(self.key)]
        for option in self.ssh_options():
            argv += ["-o", option]
        subprocess.run([*argv, str(source), f"root@{self.addresses['ipv4']}:{dest}"], check=True,
                       capture_output=True, timeout=120)

    def inventory_vars(self) -> dict:
        common = " ".join(f"-o {shlex.quote(option)}" for option in self.ssh_options())
        return {
            "ansible_host": self.addresses["ipv4"],
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": common,
            "ansible_ssh_pipelining": True,
            "ansible_ssh_timeout": 60,
            "lab_ipv4": self.addresses["ipv4"],
            "lab_ipv6": self.addresses["ipv6"],
            "lab_iface": GUEST_IFACE,
        }

    # ------------------------------------------------------------ lifecycle

    def qemu_argv(self, overlay: Path) -> list[str]:
        append = " ".join([
            "root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "panic=-1", "quiet",
            f"bpfleet.addr={self.addresses['ipv4']}/24", f"bpfleet.addr6={self.addresses['ipv6']}/64",
        ])
        return [
            "nsenter", f"--net=/run/netns/{self.switch}", "--",
            "qemu-system-x86_64", "-name", f"bpfleet-{self.lab_name}-vm{self.index}",
            "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.smp), "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console}",
            "-kernel", str(self.image_dir / "vmlinuz"), "-initrd", str(self.image_dir / "initrd.img"),
            "-append", append,
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={self.addresses['mac']}",
            "-pidfile", str(self.run_dir / "qemu.pid"),
        ]

    def start(self) -> float:
        """Boot the guest and wait for SSH; return the seconds it took."""
        for tool in ("qemu-system-x86_64", "qemu-img", "nsenter", "ssh"):
            if shutil.which(tool) is None:
                raise GuestError(f"{tool} not found (apt install qemu-system-x86 qemu-utils)")
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        overlay = self.run_dir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(self.image_dir / "root.img"), str(overlay)], check=True, capture_output=True)
        bpfleet_lab.ip("tuntap", "add", "dev", self.tap, "mode", "tap", netns=self.switch)
        bpfleet_lab.ip("link", "set", self.tap, "master", bpfleet_lab.BRIDGE, "up", netns=self.switch)
        log = open(self.run_dir / "qemu.log", "w")
        self.process = subprocess.Popen(self.qemu_argv(overlay), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        progress(f"boot {self.image['suite']}: qemu (TCG, {self.smp} vCPU, {self.memory_mb} MB) pid "
                 f"{self.process.pid}, kernel {self.image['kernel_release']}, {self.addresses['ipv4']} on "
                 f"{self.switch}/{bpfleet_lab.BRIDGE}")
        deadline = started + BOOT_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise GuestError(f"qemu exited with {self.process.returncode}:\n{self.tail()}")
            result = self.ssh("true", timeout=60, check=False)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise GuestError(f"no SSH to {self.addresses['ipv4']} after {BOOT_TIMEOUT:.0f} s:\n{self.tail()}")
            time.sleep(2)
        seconds = time.monotonic() - started
        progress(f"ssh {self.image['suite']}: guest up, SSH answers after {seconds:.0f} s")
        return seconds

    def tail(self, lines: int = 40) -> str:
        text = ""
        for path in (self.run_dir / "qemu.log", self.console):
            try:
                text += f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
            except OSError:
                pass
        return text

    def stop(self) -> None:
        if self.control_dir.is_dir():
            for socket_path in self.control_dir.iterdir():
                subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "guest"],
                               capture_output=True, check=False, timeout=10)
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        bpfleet_lab.ip("link", "delete", self.tap, netns=self.switch, check=False)
        overlay = self.run_dir / "overlay.qcow2"
        if overlay.exists():
            overlay.unlink()
