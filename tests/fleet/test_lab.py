"""Integration test of the test fleet itself: real namespaces, real sshd, real SSH.

Run as root:  .venv/bin/pytest -m integration tests/fleet/test_lab.py
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (in requirements/controller.txt) reads the inventory")

HERE = Path(__file__).resolve().parent
LAB = HERE / "bpfleet_lab.py"
PROBE = HERE / "probe.py"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PREFIX = os.environ.get("BPFLEET_LAB_PREFIX", "bpfl")  # as bpfleet_lab.NS_PREFIX
LAB_NETWORK_PREFIXES = ("203.0.113.", "198.51.100.", "2001:db8:100:")


def missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the fleet creates namespaces, mounts and an sshd per host"
    for tool, package in {"sshd": "openssh-server", "ssh": "openssh-client", "nc": "netcat-openbsd",
                          "ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux"}.items():
        if shutil.which(tool, path=SBIN_PATH) is None:
            return f"{tool} not found: install {package}"
    if not os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3 not found: the probe runs with it on the hosts"
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_requirement() is not None, reason=str(missing_requirement())),
]


# ---------------------------------------------------------------- helpers


def lab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(LAB), *args], capture_output=True, text=True, timeout=120,
                            check=False)
    if check:
        assert result.returncode == 0, f"bpfleet_lab.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


class Fleet:
    """A fleet brought up by bpfleet_lab.py, reached the way Ansible reaches it."""

    def __init__(self, name: str, hosts: int) -> None:
        self.name = name
        self.workdir = Path("/tmp/bpfleet-lab") / name
        self.inventory_path = self.workdir / "inventory.yml"
        lab("up", "--name", name, "--hosts", str(hosts), "--inventory", str(self.inventory_path))
        group = yaml.safe_load(self.inventory_path.read_text())["all"]["children"]["bpfleet_lab"]
        self.group_vars = group["vars"]
        self.hosts = group["hosts"]

    def state(self) -> dict:
        return json.loads((self.workdir / "state.json").read_text())

    def ssh_argv(self, host: str, command: str) -> list[str]:
        """The ssh command line Ansible would build from the inventory."""
        return ["ssh", "-i", self.group_vars["ansible_ssh_private_key_file"],
                *shlex.split(self.group_vars["ansible_ssh_common_args"]),
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                f"{self.group_vars['ansible_user']}@{self.hosts[host]['ansible_host']}", command]

    def ssh(self, host: str, command: str, stdin: str | None = None, timeout: float = 60) -> str:
        result = subprocess.run(self.ssh_argv(host, command), input=stdin, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"ssh {host} {command!r} failed ({result.returncode}): {result.stderr}"
        return result.stdout

    def namespaces(self) -> list[str]:
        return [ns for ns in list_netns() if ns.startswith(f"{PREFIX}-{self.name}-")]

    def processes(self) -> set[int]:
        """Every process inside the fleet's namespaces, plus the recorded sshd pids."""
        pids = {host["sshd_pid"] for host in self.state()["hosts"]}
        for netns in self.namespaces():
            out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout
            pids |= {int(pid) for pid in out.split()}
        return pids


def list_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_netns_addresses() -> str:
    return subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout


def root_netns_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting to be reaped by init


def unique_name(tag: str) -> str:
    return f"t{tag}{os.getpid() % 100000}"


# ---------------------------------------------------------------- a running 2-host fleet


@pytest.fixture(scope="module")
def root_links_before() -> set[str]:
    return root_netns_links()


@pytest.fixture(scope="module")
def fleet(root_links_before):
    running = Fleet(unique_name("f"), hosts=2)
    yield running
    lab("down", "--name", running.name)


def test_each_host_has_its_own_hostname(fleet):
    assert fleet.ssh("h1", "hostname").strip() == "h1"
    assert fleet.ssh("h2", "hostname").strip() == "h2"
    assert fleet.ssh("h2", "cat /etc/hostname").strip() == "h2"


def test_each_host_has_its_own_bpffs(fleet):
    marker = f"/sys/fs/bpf/only-on-h1-{os.getpid()}"
    # bpffs takes directories (and pins), not regular files.
    fleet.ssh("h1", f"mkdir {marker}")
    assert fleet.ssh("h1", f"test -d {marker} && echo present").strip() == "present"
    assert fleet.ssh("h2", f"test -e {marker} && echo present || echo absent").strip() == "absent"
    assert not os.path.exists(marker), "a host's bpffs leaked into the root mount namespace"
    assert fleet.ssh("h1", "stat -f -c %T /sys/fs/bpf").strip() == "bpf_fs"


def test_per_host_directories_are_private(fleet):
    fleet.ssh("h1", "echo h1 > /var/lib/bpfleet/whoami && echo h1 > /var/log/whoami")
    assert fleet.ssh("h2", "cat /var/lib/bpfleet/whoami 2>/dev/null || echo none").strip() == "none"
    assert fleet.ssh("h2", "cat /var/log/whoami 2>/dev/null || echo none").strip() == "none"
    # What the host sees there is a directory of the workdir, not the shared filesystem.
    assert (fleet.workdir / "h1" / "lib-bpfleet" / "whoami").read_text() == "h1\n"
    assert not Path("/var/lib/bpfleet/whoami").exists()


def test_hosts_have_the_documented_addresses(fleet):
    for host, index in (("h1", 11), ("h2", 12)):
        addresses = fleet.ssh(host, "ip -o addr show dev eth0")
        for expected in (f"203.0.113.{index}/24", f"198.51.100.{index}/24", f"2001:db8:100::{index}/64"):
            assert expected in addresses
        assert fleet.hosts[host]["lab_ipv4_alt"] == f"198.51.100.{index}"
        assert fleet.hosts[host]["lab_iface"] == "eth0"
        assert fleet.hosts[host]["lab_netns"] == f"{PREFIX}-{fleet.name}-{host}"
    # No default route: nothing can leave the lab.
    assert "default" not in fleet.ssh("h1", "ip route show; ip -6 route show")


def test_root_namespace_has_no_lab_address_or_interface(fleet, root_links_before):
    addresses = root_netns_addresses()
    for prefix in LAB_NETWORK_PREFIXES:
        assert prefix not in addresses
    assert root_netns_links() == root_links_before


def test_exec_runs_inside_the_host(fleet):
    result = lab("exec", "--name", fleet.name, "--host", "h2", "--", "sh", "-c", "hostname; ip -o -4 addr show eth0")
    assert result.stdout.startswith("h2\n")
    assert "203.0.113.12/24" in result.stdout


def test_udp_from_h2_reaches_a_listener_on_h1(fleet):
    out = "/var/lib/bpfleet/probe-udp.json"
    probe = PROBE.read_text()
    # The probe is fed on stdin: `python3 - ARGS` runs it without copying it first.
    listener = subprocess.Popen(
        fleet.ssh_argv("h1", f"/usr/bin/python3 - listen --proto udp --port 9999 --duration 20 "
                             f"--stop-after 7 --out {out}"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listener.stdin.write(probe)
    listener.stdin.close()
    try:
        ready = time.monotonic() + 15
        while fleet.ssh("h1", f"cat {out} 2>/dev/null || true").strip() == "":
            assert time.monotonic() < ready, "the UDP listener on h1 never became ready"
            time.sleep(0.2)
        sent_main = json.loads(fleet.ssh("h2", "/usr/bin/python3 - send --proto udp --src 203.0.113.12 "
                                               "--dst 203.0.113.11 --port 9999 --count 4", stdin=probe))
        sent_alt = json.loads(fleet.ssh("h2", "/usr/bin/python3 - send --proto udp --src 198.51.100.12 "
                                              "--dst 203.0.113.11 --port 9999 --count 3", stdin=probe))
        assert sent_main["sent"] == 4 and sent_alt["sent"] == 3
        listener.wait(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    result = json.loads(fleet.ssh("h1", f"cat {out}"))
    assert result["done"] is True
    assert result["received"] == {"203.0.113.12": 4, "198.51.100.12": 3}
    assert result["total"] == 7


def test_inventory_works_with_ansible(fleet):
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    if not os.path.exists(ansible):
        pytest.skip("ansible not installed in this Python environment")
    result = subprocess.run([ansible, "-i", str(fleet.inventory_path), "bpfleet_lab", "-m", "ansible.builtin.ping"],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_DEPRECATION_WARNINGS": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


# ---------------------------------------------------------------- teardown and crash recovery


def test_down_removes_namespaces_processes_and_workdir():
    doomed = Fleet(unique_name("d"), hosts=2)
    # A lingering SSH master and a long-running process on a host, as Ansible might leave.
    subprocess.run(doomed.ssh_argv("h1", "true"), check=True, timeout=30)
    assert list((doomed.workdir / "cp").iterdir()), "expected an SSH ControlMaster socket"
    doomed.ssh("h2", "nohup sleep 300 >/dev/null 2>&1 &")
    before = doomed.processes()
    assert len(doomed.namespaces()) == 3
    assert len(before) >= 3

    lab("down", "--name", doomed.name)

    assert doomed.namespaces() == []
    assert [pid for pid in before if alive(pid)] == []
    assert not doomed.workdir.exists()
    masters = subprocess.run(["pgrep", "-f", f"{doomed.workdir}/cp/"], capture_output=True, text=True,
                             check=False).stdout
    assert masters.strip() == "", f"SSH masters left: {masters}"
    # Idempotent: a second down finds nothing and succeeds.
    lab("down", "--name", doomed.name)


def test_up_after_a_crash_replaces_the_stale_fleet():
    name = unique_name("c")
    crashed = Fleet(name, hosts=2)
    old_pids = [host["sshd_pid"] for host in crashed.state()["hosts"]]
    for pid in old_pids:
        os.kill(pid, signal.SIGKILL)  # the "crash": namespaces and workdir stay behind
    try:
        revived = Fleet(name, hosts=2)
        assert revived.ssh("h1", "hostname").strip() == "h1"
        assert revived.ssh("h2", "hostname").strip() == "h2"
        new_pids = [host["sshd_pid"] for host in revived.state()["hosts"]]
        assert set(new_pids).isdisjoint(old_pids)
        assert sorted(revived.namespaces()) == sorted(f"{PREFIX}-{name}-{n}" for n in ("h1", "h2", "sw"))
    finally:
        lab("down", "--name", name)
    assert not [ns for ns in list_netns() if ns.startswith(f"{PREFIX}-{name}-")]


def test_down_cleans_stale_namespaces_without_a_state_file():
    name = unique_name("s")
    stale = Fleet(name, hosts=1)
    sshd = stale.state()["hosts"][0]["sshd_pid"]
    shutil.rmtree(stale.workdir)  # state file and keys gone, namespaces and sshd still there
    assert len(stale.namespaces()) == 2

    lab("down", "--name", name)

    assert stale.namespaces() == []
    assert not alive(sshd)


def test_up_and_down_leave_a_workdir_they_did_not_make_alone():
    foreign = Path(tempfile.mkdtemp(prefix="bpfl-foreign-"))
    try:
        (foreign / "precious.txt").write_text("keep me")
        name = unique_name("w")
        result = lab("up", "--name", name, "--hosts", "1", "--workdir", str(foreign), check=False)
        assert result.returncode != 0
        assert "was not made by bpfleet_lab.py" in result.stderr
        lab("down", "--name", name, "--workdir", str(foreign))
        assert (foreign / "precious.txt").read_text() == "keep me"
        assert not [ns for ns in list_netns() if ns.startswith(f"{PREFIX}-{name}-")]
    finally:
        shutil.rmtree(foreign)
