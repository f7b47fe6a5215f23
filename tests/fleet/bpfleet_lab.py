"""bpfleet test fleet: several real SSH hosts on one Linux machine.

A host is a network namespace plus its own mount and UTS namespaces, running its own sshd.
The hosts hang off a bridge that lives in a separate "switch" namespace, so the root
namespace never gets an address on the test network; the controller reaches the hosts
with an SSH ProxyCommand that runs `nc` inside the switch namespace.

    bpfleet_lab.py up     --name NAME --hosts N [--inventory FILE] [--workdir DIR]
    bpfleet_lab.py down   --name NAME [--workdir DIR]
    bpfleet_lab.py status --name NAME [--workdir DIR]
    bpfleet_lab.py exec   --name NAME --host h1 [--workdir DIR] -- CMD...

Standard library only (Python 3.9+), run as root. See docs/test-fleet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

# Namespace names start with this. BPFLEET_LAB_PREFIX lets two checkouts run the same tests
# at once (each fleet's names then differ); it must stay short and a valid name.
NS_PREFIX = os.environ.get("BPFLEET_LAB_PREFIX", "bpfl")
DEFAULT_WORKDIR_BASE = "/tmp/bpfleet-lab"
STATE_FILE = "state.json"
# A directory holding this file was made by `up`; `down` deletes no directory without it.
WORKDIR_MARKER = ".bpfleet-lab"
BRIDGE = "br0"
HOST_IFACE = "eth0"
MAX_HOSTS = 99
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

# Documentation ranges only (RFC 5737, RFC 3849): nothing here is routable anywhere else.
NET_V4 = "203.0.113"
NET_V4_ALT = "198.51.100"
NET_V6 = "2001:db8:100:"
CONTROLLER_V4 = f"{NET_V4}.1"
CONTROLLER_V6 = f"{NET_V6}:1"

# Tool -> Debian package that provides it, for the "install X" error message.
REQUIRED_TOOLS = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nc": "netcat-openbsd",
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "ethtool": "ethtool",
}
EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

# Mount points on the shared filesystem that each host covers with its own directory.
# /var/lib itself stays shared: dpkg's database lives there. /usr/lib/bpfleet (the agent's
# code) is per host so that two checkouts testing at once never run each other's agent.
PER_HOST_BIND_MOUNTS = {
    "log": "/var/log",
    "usr-lib-bpfleet": "/usr/lib/bpfleet",
    "lib-bpfleet": "/var/lib/bpfleet",
    "etc-bpfleet": "/etc/bpfleet",
    "ssh": "/etc/ssh",
    "root": "/root",
}
PER_HOST_FILE_MOUNTS = {"hostname": "/etc/hostname", "hosts": "/etc/hosts"}

SSHD_READY_TIMEOUT = 30.0
KILL_GRACE_SECONDS = 3.0


class LabError(Exception):
    """A failure with a message meant for the person running the lab."""


def say(name: str, message: str) -> None:
    print(f"[bpfleet-lab {name}] {message}", flush=True)


# ---------------------------------------------------------------- names and addresses


def switch_netns(name: str) -> str:
    return f"{NS_PREFIX}-{name}-sw"


def host_netns(name: str, host: str) -> str:
    return f"{NS_PREFIX}-{name}-{host}"


def fleet_netns_pattern(name: str) -> re.Pattern:
    # Anchored so fleet "a" never matches the namespaces of fleet "a-b".
    return re.compile(rf"^{re.escape(NS_PREFIX)}-{re.escape(name)}-(sw|h[0-9]+)$")


def host_names(count: int) -> list[str]:
    return [f"h{index}" for index in range(1, count + 1)]


def host_index(host: str) -> int:
    return int(host[1:])


def host_addresses(host: str) -> dict:
    last_octet = 10 + host_index(host)
    return {
        "ipv4": f"{NET_V4}.{last_octet}",
        "ipv4_alt": f"{NET_V4_ALT}.{last_octet}",
        "ipv6": f"{NET_V6}:{last_octet}",
        # Locally administered and fixed, so log records can be checked against it.
        "mac": f"02:62:66:6c:00:{host_index(host):02x}",
    }


def default_workdir(name: str) -> str:
    return os.path.join(DEFAULT_WORKDIR_BASE, name)


def control_dir(workdir: str) -> str:
    return os.path.join(workdir, "cp")


def sshd_config_path(workdir: str, host: str) -> str:
    # Also the marker that identifies this host's sshd in /proc/<pid>/cmdline.
    return os.path.join(workdir, host, "ssh", "sshd_config")


def boot_script_path(workdir: str, host: str) -> str:
    return os.path.join(workdir, host, "boot.sh")


def private_key_path(workdir: str) -> str:
    return os.path.join(workdir, "id_ed25519")


def proxy_command(name: str) -> str:
    return f"nsenter --net=/run/netns/{switch_netns(name)} nc %h %p"


def ssh_options(name: str, workdir: str) -> list[str]:
    """SSH client options shared by the inventory, ssh_config and readiness checks."""
    return [
        f"ProxyCommand={proxy_command(name)}",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "LogLevel=ERROR",
        "ControlMaster=auto",
        "ControlPersist=60s",
        # Per fleet, so two fleets with the same addresses never share a master and
        # `down` can find and close every master of this fleet.
        f"ControlPath={control_dir(workdir)}/%h-%p-%r",
    ]


# ---------------------------------------------------------------- running commands


def find_tool(tool: str) -> str | None:
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_TOOL_DIRS])
    return shutil.which(tool, path=search_path)


def require_tools() -> dict:
    found = {}
    missing = []
    for tool, package in REQUIRED_TOOLS.items():
        path = find_tool(tool)
        if path is None:
            missing.append(f"{tool} not found: install {package}")
        found[tool] = path
    if missing:
        raise LabError("; ".join(missing))
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("must run as root (it creates namespaces, mounts and an sshd per host)")


def run(cmd: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"command failed (rc={result.returncode}): {' '.join(cmd)}: {detail}")
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # Every address and link command names its namespace: nothing is done in the root one.
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], check=check)


# ---------------------------------------------------------------- state file


def state_path(workdir: str) -> str:
    return os.path.join(workdir, STATE_FILE)


def load_state(workdir: str) -> dict | None:
    try:
        with open(state_path(workdir)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {state_path(workdir)}: {exc}") from exc


def save_state(workdir: str, state: dict) -> None:
    # Written after every step of `up`, so a crash leaves enough behind for `down`.
    temporary = state_path(workdir) + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, state_path(workdir))


# ---------------------------------------------------------------- processes


def read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(roots: set[int]) -> set[int]:
    """Children, grandchildren... of roots (SSH sessions of a host's sshd, for example)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        parent = parent_pid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def pids_matching(pattern: re.Pattern) -> set[int]:
    own = os.getpid()
    return {pid for pid in all_pids() if pid != own and pattern.search(read_cmdline(pid))}


def netns_pids(netns: str) -> set[int]:
    result = ip("netns", "pids", netns, check=False)
    if result.returncode != 0:
        return set()
    return {int(token) for token in result.stdout.split() if token.isdigit()}


def signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def terminate(pids: set[int]) -> set[int]:
    """SIGTERM, a grace period, then SIGKILL. Returns the pids still running after all that."""
    pids = {pid for pid in pids if pid != os.getpid()}
    signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(0.05)
    stubborn = {pid for pid in pids if is_running(pid)}
    signal_all(stubborn, signal.SIGKILL)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < deadline and any(is_running(pid) for pid in stubborn):
        time.sleep(0.05)
    return {pid for pid in stubborn if is_running(pid)}


# ---------------------------------------------------------------- teardown


def existing_netns() -> list[str]:
    result = ip("netns", "list", check=False)
    # Lines look like "bpfl-x-h1 (id: 3)" or just "bpfl-x-h1".
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def fleet_netns(name: str, state: dict | None) -> list[str]:
    """Namespaces of this fleet: the recorded ones and any stale ones with its prefix."""
    pattern = fleet_netns_pattern(name)
    names = {ns for ns in existing_netns() if pattern.match(ns)}
    if state:
        recorded = [state.get("switch_netns")] + [h["netns"] for h in state.get("hosts", [])]
        names.update(ns for ns in recorded if ns and ns in existing_netns())
    return sorted(names)


def close_control_masters(name: str, workdir: str) -> int:
    """Ask every SSH ControlMaster of this fleet to exit.

    A master keeps its ProxyCommand (nc inside the switch namespace) running, and that
    process would keep the deleted namespace alive. Returns how many were closed.
    """
    directory = control_dir(workdir)
    if not os.path.isdir(directory):
        return 0
    closed = 0
    ssh = find_tool("ssh") or "ssh"
    for entry in sorted(os.listdir(directory)):
        socket_path = os.path.join(directory, entry)
        # The host argument is required by ssh but unused: ControlPath is a literal path.
        result = run([ssh, "-o", f"ControlPath={socket_path}", "-O", "exit", "lab-host"],
                     check=False, timeout=10)
        if result.returncode == 0:
            closed += 1
    return closed


def fleet_cmdline_pattern(workdir: str) -> re.Pattern:
    w = re.escape(workdir.rstrip("/"))
    return re.compile("|".join([
        rf"^(sshd: )?\S*sshd -D -e -f {w}/h[0-9]+/ssh/sshd_config( |$)",   # a host's sshd
        rf"/bin/sh {w}/h[0-9]+/boot\.sh$",  # ip netns exec / unshare / sh before sshd
        rf"^ssh: {w}/cp/",  # a ControlMaster ("ssh: PATH [mux]")
        rf"^\S*ssh .*ControlPath=\"?{w}/cp/",  # an ssh client using this fleet's masters
    ]))


def fleet_processes(name: str, workdir: str, state: dict | None, namespaces: list[str]) -> set[int]:
    """Every process this fleet started, found by namespace, recorded pid and cmdline."""
    pids: set[int] = set()
    for netns in namespaces:
        pids |= netns_pids(netns)
    # sshd (and its boot script) of any host of this workdir, even one whose namespace
    # is already gone, and any SSH master or client using this fleet's ControlPath.
    # Anchored on the program, so `less WORKDIR/h1/boot.sh` is not taken for a host.
    pids |= pids_matching(fleet_cmdline_pattern(workdir))
    for host in (state or {}).get("hosts", []):
        pid = host.get("sshd_pid")
        # Only while the cmdline still matches: the pid may belong to someone else by now.
        if pid and host.get("sshd_marker", "\0") in read_cmdline(pid):
            pids.add(pid)
    return pids | descendants(pids)


def remove_workdir(name: str, workdir: str) -> None:
    if not os.path.isdir(workdir):
        return
    if not os.path.exists(os.path.join(workdir, WORKDIR_MARKER)):
        say(name, f"leaving {workdir} in place: it has no {WORKDIR_MARKER} marker, so up did not make it")
        return
    shutil.rmtree(workdir, ignore_errors=True)
    if os.path.isdir(workdir):
        raise LabError(f"could not remove {workdir}")


def teardown(name: str, workdir: str) -> list[str]:
    """Remove everything of fleet NAME. Idempotent. Returns a list of leftovers (empty = clean)."""
    try:
        state = load_state(workdir)
    except LabError as exc:
        # Names and cmdlines still identify what the fleet made: clean up without the file.
        say(name, f"ignoring an unreadable state file: {exc}")
        state = None
    closed = close_control_masters(name, workdir)
    if closed:
        say(name, f"closed {closed} SSH control master(s)")
    namespaces = fleet_netns(name, state)
    processes = fleet_processes(name, workdir, state, namespaces)
    if processes:
        say(name, f"stopping {len(processes)} process(es): {' '.join(map(str, sorted(processes)))}")
    leftovers = [f"process {pid} ({read_cmdline(pid)}) survived SIGKILL" for pid in sorted(terminate(processes))]
    for netns in namespaces:
        say(name, f"deleting namespace {netns}")
        ip("netns", "delete", netns, check=False)
    leftovers += [f"namespace {ns} still listed" for ns in fleet_netns(name, None)]
    remove_workdir(name, workdir)
    return leftovers


# ---------------------------------------------------------------- bring-up: files


def write_file(path: str, content: str, mode: int = 0o644) -> None:
    with open(path, "w") as handle:
        handle.write(content)
    os.chmod(path, mode)


def make_controller_key(workdir: str) -> str:
    key = private_key_path(workdir)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bpfleet-lab-controller", "-f", key])
    with open(key + ".pub") as handle:
        return handle.read()


def sshd_config_text(host: str) -> str:
    return f"""# Written by bpfleet_lab.py for test host {host}. Root by key only, no PAM.
Port 22
ListenAddress 0.0.0.0
ListenAddress ::
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AcceptEnv LANG LC_*
# Ansible runs many forks; do not drop connections that arrive together.
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
"""


def hosts_file_text(hosts: list[str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{CONTROLLER_V4}\tlab-controller"]
    for host in hosts:
        addresses = host_addresses(host)
        lines.append(f"{addresses['ipv4']}\t{host}")
        lines.append(f"{addresses['ipv6']}\t{host}")
    return "\n".join(lines) + "\n"


def boot_script_text(workdir: str, host: str, sshd: str) -> str:
    """Shell run inside the host's fresh mount and UTS namespaces; ends by exec'ing sshd."""
    base = os.path.join(workdir, host)
    binds = "\n".join(f"mount --bind {os.path.join(base, src)} {dst}"
                      for src, dst in {**PER_HOST_BIND_MOUNTS, **PER_HOST_FILE_MOUNTS}.items())
    return f"""#!/bin/sh
# Test host {host}: runs inside `ip netns exec <ns> unshare --mount --uts --propagation private`.
# Mounts made here are private to this host; the shared filesystem is not changed.
set -eu
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd /run/lock
chmod 0755 /run/sshd
{binds}
hostname {host}
# exec keeps the pid: the pid recorded by bpfleet_lab.py is sshd's.
exec {sshd} -D -e -f {sshd_config_path(workdir, host)}
"""


def copy_directory_skeleton(source: str, target: str, depth: int = 2) -> None:
    """Recreate source's subdirectories (not files) under target, with mode and owner.

    A host's empty /var/log would otherwise lack /var/log/apt and the like, which
    package tools expect to exist.
    """
    for entry in os.scandir(source):
        if not entry.is_dir(follow_symlinks=False):
            continue
        info = entry.stat(follow_symlinks=False)
        path = os.path.join(target, entry.name)
        os.makedirs(path, exist_ok=True)
        os.chown(path, info.st_uid, info.st_gid)
        os.chmod(path, info.st_mode & 0o7777)
        if depth > 1:
            copy_directory_skeleton(entry.path, path, depth - 1)


def prepare_host_files(workdir: str, host: str, hosts: list[str], public_key: str, sshd: str) -> None:
    base = os.path.join(workdir, host)
    for sub in PER_HOST_BIND_MOUNTS:
        os.makedirs(os.path.join(base, sub), mode=0o755, exist_ok=True)
    copy_directory_skeleton("/var/log", os.path.join(base, "log"))
    os.chmod(os.path.join(base, "root"), 0o700)
    ssh_dir = os.path.join(base, "ssh")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{host}-hostkey",
         "-f", os.path.join(ssh_dir, "ssh_host_ed25519_key")])
    for shared in ("moduli", "ssh_config"):
        if os.path.exists(f"/etc/ssh/{shared}"):
            shutil.copy(f"/etc/ssh/{shared}", ssh_dir)
    write_file(sshd_config_path(workdir, host), sshd_config_text(host))
    dot_ssh = os.path.join(base, "root", ".ssh")
    os.makedirs(dot_ssh, mode=0o700, exist_ok=True)
    write_file(os.path.join(dot_ssh, "authorized_keys"), public_key, 0o600)
    write_file(os.path.join(base, "hostname"), host + "\n")
    write_file(os.path.join(base, "hosts"), hosts_file_text(hosts))
    write_file(boot_script_path(workdir, host), boot_script_text(workdir, host, sshd), 0o755)


def ensure_shared_mount_points() -> None:
    # A bind mount needs a target: create the empty directories on the shared filesystem.
    for target in PER_HOST_BIND_MOUNTS.values():
        os.makedirs(target, exist_ok=True)
    for target in PER_HOST_FILE_MOUNTS.values():
        if not os.path.isfile(target):
            raise LabError(f"{target} is missing: the hosts bind-mount their own over it")


# ---------------------------------------------------------------- bring-up: network


def enable_gro(netns: str, device: str) -> None:
    # A veth peer drops frames sent with XDP unless its receiver runs NAPI (LAB-NOTES).
    run(["nsenter", f"--net=/run/netns/{netns}", "ethtool", "-K", device, "gro", "on"])


def create_switch(name: str) -> str:
    switch = switch_netns(name)
    ip("netns", "add", switch)
    ip("link", "set", "lo", "up", netns=switch)
    # No STP (ports forward at once) and no multicast snooping (IPv6 ND always floods).
    ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "mcast_snooping", "0", netns=switch)
    ip("addr", "add", f"{CONTROLLER_V4}/24", "dev", BRIDGE, netns=switch)
    ip("-6", "addr", "add", f"{CONTROLLER_V6}/64", "dev", BRIDGE, "nodad", netns=switch)
    ip("link", "set", BRIDGE, "up", netns=switch)
    return switch


def create_host_network(name: str, host: str) -> str:
    switch = switch_netns(name)
    netns = host_netns(name, host)
    addresses = host_addresses(host)
    ip("netns", "add", netns)
    ip("link", "set", "lo", "up", netns=netns)
    # Made inside the switch namespace with the peer placed straight into the host:
    # neither end ever exists in the root namespace.
    ip("link", "add", host, "type", "veth", "peer", "name", HOST_IFACE, "netns", netns, netns=switch)
    ip("link", "set", host, "master", BRIDGE, "up", netns=switch)
    ip("link", "set", HOST_IFACE, "address", addresses["mac"], netns=netns)
    ip("addr", "add", f"{addresses['ipv4']}/24", "dev", HOST_IFACE, netns=netns)
    ip("addr", "add", f"{addresses['ipv4_alt']}/24", "dev", HOST_IFACE, netns=netns)
    ip("-6", "addr", "add", f"{addresses['ipv6']}/64", "dev", HOST_IFACE, "nodad", netns=netns)
    ip("link", "set", HOST_IFACE, "up", netns=netns)
    enable_gro(switch, host)
    enable_gro(netns, HOST_IFACE)
    # No default route on purpose: packets to anything outside the lab have no way out.
    return netns


# ---------------------------------------------------------------- bring-up: sshd


def start_sshd(workdir: str, host: str, netns: str) -> subprocess.Popen:
    log = open(os.path.join(workdir, host, "sshd.log"), "ab")
    try:
        return subprocess.Popen(
            ["ip", "netns", "exec", netns,
             "unshare", "--mount", "--uts", "--propagation", "private", "--",
             "/bin/sh", boot_script_path(workdir, host)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            # Own session: the hosts outlive this command and ignore its terminal's signals.
            start_new_session=True,
        )
    finally:
        log.close()


def ssh_command(name: str, workdir: str, address: str, *remote: str) -> list[str]:
    options = [o for o in ssh_options(name, workdir) if not o.startswith("Control")]
    # A probe connection must not leave a master behind.
    options += ["ControlMaster=no", "ControlPath=none", "BatchMode=yes", "ConnectTimeout=3"]
    args = ["ssh", "-i", private_key_path(workdir)]
    for option in options:
        args += ["-o", option]
    return [*args, f"root@{address}", *remote]


def log_tail(workdir: str, host: str, lines: int = 15) -> str:
    try:
        with open(os.path.join(workdir, host, "sshd.log"), errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return "(no sshd.log)"


def wait_for_sshd(name: str, workdir: str, host: str, process: subprocess.Popen) -> None:
    """Wait until a real SSH login through the proxy works and lands on the right host."""
    address = host_addresses(host)["ipv4"]
    deadline = time.monotonic() + SSHD_READY_TIMEOUT
    last_error = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"sshd of {host} exited with rc={process.returncode}; sshd.log:\n"
                           f"{log_tail(workdir, host)}")
        result = run(ssh_command(name, workdir, address, "hostname"), check=False, timeout=15)
        if result.returncode == 0 and result.stdout.strip() == host:
            return
        if result.returncode == 0:
            raise LabError(f"{address} answered as {result.stdout.strip()!r}, expected {host!r}")
        last_error = result.stderr.strip()
        time.sleep(0.1)
    raise LabError(f"sshd of {host} did not answer within {SSHD_READY_TIMEOUT:.0f} s: {last_error}; "
                   f"sshd.log:\n{log_tail(workdir, host)}")


# ---------------------------------------------------------------- inventory


def yaml_str(value: str) -> str:
    # A JSON string literal is a valid YAML double-quoted scalar.
    return json.dumps(value)


def host_vars(name: str, host: str) -> dict:
    addresses = host_addresses(host)
    return {
        "ansible_host": addresses["ipv4"],
        "lab_ipv4": addresses["ipv4"],
        "lab_ipv4_alt": addresses["ipv4_alt"],
        "lab_ipv6": addresses["ipv6"],
        "lab_mac": addresses["mac"],
        "lab_iface": HOST_IFACE,
        "lab_netns": host_netns(name, host),
    }


def group_vars(name: str, workdir: str) -> dict:
    common_args = " ".join(
        f'-o {option.split("=", 1)[0]}="{option.split("=", 1)[1]}"' if " " in option else f"-o {option}"
        for option in ssh_options(name, workdir))
    return {
        "ansible_user": "root",
        "ansible_port": 22,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": private_key_path(workdir),
        "ansible_ssh_common_args": common_args,
        "lab_name": name,
        "lab_workdir": workdir,
        "lab_switch_netns": switch_netns(name),
        # Where the controller's SSH comes from: a policy must never deny it.
        "lab_controller_ipv4": CONTROLLER_V4,
        "lab_controller_ipv6": CONTROLLER_V6,
    }


def yaml_mapping(values: dict, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}{key}: {yaml_str(v) if isinstance(v, str) else v}" for key, v in values.items()]


def inventory_text(name: str, workdir: str, hosts: list[str]) -> str:
    lines = [f"# Written by tests/fleet/bpfleet_lab.py up --name {name}; stale once `down` ran.",
             "all:", "  children:", "    bpfleet_lab:", "      vars:"]
    lines += yaml_mapping(group_vars(name, workdir), 8)
    lines.append("      hosts:")
    for host in hosts:
        lines.append(f"        {host}:")
        lines += yaml_mapping(host_vars(name, host), 10)
    return "\n".join(lines) + "\n"


def ssh_config_text(name: str, workdir: str, hosts: list[str]) -> str:
    """For people: `ssh -F <workdir>/ssh_config h1`."""
    blocks = []
    for host in hosts:
        options = "".join(f"  {option.replace('=', ' ', 1)}\n" for option in ssh_options(name, workdir))
        blocks.append(f"Host {host}\n  HostName {host_addresses(host)['ipv4']}\n  User root\n"
                      f"  IdentityFile {private_key_path(workdir)}\n{options}")
    return "\n".join(blocks)


# ---------------------------------------------------------------- commands


def check_workdir(workdir: str) -> None:
    # A unix socket path holds 107 bytes; ssh adds a 17-byte suffix while it binds, and
    # "/cp/2001:db8:100::NN-22-root" takes 28 more.
    if len(workdir) > 60:
        raise LabError(f"workdir {workdir!r} is too long for SSH ControlPath sockets (max 60 characters)")


def bring_up(name: str, count: int, workdir: str, inventory: str) -> dict:
    tools = require_tools()
    if os.path.isdir(workdir) and os.listdir(workdir):
        # `down` deletes the workdir: never adopt a directory holding someone's files.
        raise LabError(f"workdir {workdir} exists and was not made by bpfleet_lab.py: "
                       "give a new or empty directory")
    check_workdir(workdir)
    hosts = host_names(count)
    os.makedirs(control_dir(workdir), mode=0o700)
    os.chmod(workdir, 0o700)
    write_file(os.path.join(workdir, WORKDIR_MARKER), name + "\n")
    state = {"name": name, "workdir": workdir, "switch_netns": switch_netns(name), "hosts": [],
             "inventory": inventory, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_state(workdir, state)
    ensure_shared_mount_points()
    public_key = make_controller_key(workdir)

    say(name, f"creating switch namespace {switch_netns(name)} with bridge {BRIDGE} ({CONTROLLER_V4}/24)")
    create_switch(name)
    processes = {}
    for host in hosts:
        netns = create_host_network(name, host)
        prepare_host_files(workdir, host, hosts, public_key, tools["sshd"])
        processes[host] = start_sshd(workdir, host, netns)
        state["hosts"].append({"name": host, "netns": netns, "sshd_pid": processes[host].pid,
                               "sshd_marker": sshd_config_path(workdir, host), **host_addresses(host)})
        save_state(workdir, state)
        say(name, f"{host}: namespace {netns}, {host_addresses(host)['ipv4']}, sshd pid {processes[host].pid}")

    for host in hosts:
        wait_for_sshd(name, workdir, host, processes[host])
        say(name, f"{host}: ssh root@{host_addresses(host)['ipv4']} answers")
    write_file(os.path.join(workdir, "ssh_config"), ssh_config_text(name, workdir, hosts))
    os.makedirs(os.path.dirname(inventory) or ".", exist_ok=True)
    write_file(inventory, inventory_text(name, workdir, hosts))
    state["ready"] = True
    save_state(workdir, state)
    return state


def command_up(args: argparse.Namespace) -> int:
    workdir = args.workdir
    inventory = os.path.abspath(args.inventory or os.path.join(workdir, "inventory.yml"))
    started = time.monotonic()
    leftovers = teardown(args.name, workdir)
    if leftovers:
        raise LabError("cannot clean up the previous fleet: " + "; ".join(leftovers))
    try:
        bring_up(args.name, args.hosts, workdir, inventory)
    except BaseException:
        if not args.keep_on_failure:
            say(args.name, "bring-up failed: tearing down what was made (--keep-on-failure keeps it)")
            teardown(args.name, workdir)
        raise
    say(args.name, f"up: {args.hosts} host(s) in {time.monotonic() - started:.1f} s; inventory {inventory}")
    return 0


def command_down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    leftovers = teardown(args.name, args.workdir)
    if leftovers:
        raise LabError("teardown left things behind: " + "; ".join(leftovers))
    say(args.name, f"down in {time.monotonic() - started:.1f} s")
    return 0


def describe(name: str, workdir: str) -> dict:
    state = load_state(workdir)
    namespaces = existing_netns()
    hosts = []
    for host in (state or {}).get("hosts", []):
        pid = host.get("sshd_pid")
        hosts.append({
            "name": host["name"], "netns": host["netns"], "netns_exists": host["netns"] in namespaces,
            "ipv4": host.get("ipv4"), "sshd_pid": pid,
            "sshd_running": bool(pid) and is_running(pid) and host["sshd_marker"] in read_cmdline(pid),
            "pids": sorted(netns_pids(host["netns"])) if host["netns"] in namespaces else [],
        })
    cp = control_dir(workdir)
    recorded = {h["netns"] for h in hosts} | {(state or {}).get("switch_netns")}
    switch = switch_netns(name)
    return {
        "name": name, "workdir": workdir, "state_file": state is not None,
        "ready": bool(state and state.get("ready")),
        "up": bool(hosts) and all(h["netns_exists"] and h["sshd_running"] for h in hosts),
        "switch_netns": {"name": switch, "exists": switch in namespaces,
                         "pids": sorted(netns_pids(switch)) if switch in namespaces else []},
        "hosts": hosts,
        "unrecorded_namespaces": [ns for ns in fleet_netns(name, None) if ns not in recorded],
        "control_sockets": sorted(os.listdir(cp)) if os.path.isdir(cp) else [],
        "inventory": (state or {}).get("inventory"),
    }


def command_status(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.name, args.workdir), indent=2))
    return 0


def command_exec(args: argparse.Namespace) -> int:
    state = load_state(args.workdir)
    if state is None:
        raise LabError(f"fleet {args.name} is not up (no {state_path(args.workdir)})")
    host = next((h for h in state["hosts"] if h["name"] == args.host), None)
    if host is None:
        raise LabError(f"no host {args.host} in fleet {args.name}: "
                       f"{', '.join(h['name'] for h in state['hosts'])}")
    pid = host["sshd_pid"]
    if not (is_running(pid) and host["sshd_marker"] in read_cmdline(pid)):
        raise LabError(f"sshd of {args.host} (pid {pid}) is not running; run `up` again")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LabError("exec needs a command after --")
    # sshd's namespaces are the host: its network, its mounts (bpffs, /run...), its hostname.
    os.execvp("nsenter", ["nsenter", "-t", str(pid), "--net", "--mount", "--uts", "--", *command])
    return 127  # not reached


# ---------------------------------------------------------------- argument parsing


def fleet_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            f"invalid fleet name {value!r}: letters, digits, '_', '.', '-', at most 32, start alphanumeric")
    return value


def host_count(value: str) -> int:
    count = int(value)
    if not 1 <= count <= MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"--hosts must be between 1 and {MAX_HOSTS}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command_name", required=True)

    def add(command: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("--name", required=True, type=fleet_name, help="fleet name (namespaces bpfl-NAME-*)")
        sub.add_argument("--workdir", help=f"state, keys and per-host dirs (default {DEFAULT_WORKDIR_BASE}/NAME)")
        return sub

    up = add("up", "create the fleet (tears down a previous one of the same name first)")
    up.add_argument("--hosts", required=True, type=host_count, help="number of hosts (h1..hN)")
    up.add_argument("--inventory", help="Ansible YAML inventory to write (default WORKDIR/inventory.yml)")
    up.add_argument("--keep-on-failure", action="store_true", help="leave a failed bring-up for debugging")
    up.set_defaults(handler=command_up)
    add("down", "remove everything the fleet made; safe to repeat").set_defaults(handler=command_down)
    add("status", "print JSON of what exists").set_defaults(handler=command_status)
    run_in = add("exec", "run a command inside a host's network, mount and UTS namespaces")
    run_in.add_argument("--host", required=True, help="h1, h2, ...")
    run_in.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run_in.set_defaults(handler=command_exec)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workdir = os.path.abspath(args.workdir or default_workdir(args.name))
    # sshd, ip... live in sbin, which a non-login root shell may not have on PATH.
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_TOOL_DIRS])
    try:
        require_root()
        return args.handler(args)
    except LabError as exc:
        print(f"bpfleet-lab: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
