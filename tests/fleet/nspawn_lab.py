"""bpfleet test fleet of full hosts: systemd as PID 1 in systemd-nspawn containers.

    nspawn_lab.py rootfs                             build (or reuse) the cached root filesystem
    nspawn_lab.py up --name F --hosts N [--inventory PATH]
    nspawn_lab.py down --name F
    nspawn_lab.py exec --name F --host h1 -- CMD...  run CMD inside the container (all its namespaces)

The namespace fleet of bpfleet_lab.py has no init: it cannot prove a systemd unit. Here each
host boots systemd (`systemd-nspawn -b`) on an overlay of one Debian root filesystem, in its
own network namespace wired to the same kind of switch as bpfleet_lab.py (whose network,
key, inventory and teardown code this reuses: same addresses, same SSH through the switch
namespace, same inventory variables).

The root filesystem is built once with `debootstrap --variant=minbase` and only what the
systemd scenario needs (systemd, dbus, python3 for Ansible and the agent, openssh-server,
prometheus-node-exporter, iproute2): no BCC, no compiler. It is cached under
/var/cache/bpfleet-lab/rootfs-<digest of the package list and setup> and reused until that
changes. CI builds it on every fresh machine (about 2-5 minutes, 330 MB).

Container settings that matter on this kernel (LAB-NOTES): started through
`nsenter --net=/run/netns/<ns>`; `--system-call-filter=bpf` (else bpf() is EPERM);
capabilities NET_ADMIN, BPF, PERFMON added; bpffs mounted inside by a oneshot unit;
`--register=no` (no machined on a host without systemd).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpfleet_lab as lab  # noqa: E402

CACHE = "/var/cache/bpfleet-lab"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "prometheus-node-exporter", "iproute2"]
BOOT_TIMEOUT = 90.0

# Written into the root filesystem after debootstrap; part of its digest.
SETUP_FILES = {
    # bpffs for the policies' pins. A oneshot service, not a .mount unit: systemd 252 in a
    # container rejects a bpf mount unit ("bad-setting").
    "etc/systemd/system/bpffs.service": (
        "[Unit]\nDescription=BPF filesystem on /sys/fs/bpf\nDefaultDependencies=no\nBefore=sysinit.target\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'\n\n"
        "[Install]\nWantedBy=sysinit.target\n"),
    "etc/systemd/system/sysinit.target.wants/bpffs.service": "@link ../bpffs.service",
    # The controller logs in as root with its key (bind-mounted per fleet).
    "etc/ssh/sshd_config.d/bpfleet-lab.conf": "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                                              "UseDNS no\n",
    # Nothing to wait for at boot in a lab container.
    "etc/systemd/system/systemd-networkd-wait-online.service": "@link /dev/null",
    "etc/systemd/system/getty@.service": "@link /dev/null",
    "etc/systemd/system/console-getty.service": "@link /dev/null",
}


def rootfs_digest() -> str:
    spec = json.dumps({"suite": SUITE, "packages": PACKAGES, "files": SETUP_FILES, "variant": "minbase"},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def rootfs_path() -> str:
    return os.path.join(CACHE, "rootfs-" + rootfs_digest())


def ensure_rootfs() -> tuple[str, float]:
    """The cached root filesystem, built if missing; (path, seconds spent building)."""
    target = rootfs_path()
    if os.path.exists(os.path.join(target, ".bpfleet-ready")):
        return target, 0.0
    if not shutil.which("debootstrap"):
        raise lab.LabError("debootstrap not found (scripts/bootstrap.sh installs it)")
    started = time.monotonic()
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(CACHE, exist_ok=True)
    result = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE,
                             partial, MIRROR], capture_output=True, text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise lab.LabError("debootstrap failed:\n" + (result.stdout + result.stderr)[-4000:])
    for relative, content in SETUP_FILES.items():
        path = os.path.join(partial, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        if content.startswith("@link "):
            os.symlink(content[len("@link "):], path)
        else:
            with open(path, "w") as handle:
                handle.write(content)
    # The host's apt caches are of no use in a container.
    shutil.rmtree(os.path.join(partial, "var", "cache", "apt", "archives"), ignore_errors=True)
    with open(os.path.join(partial, ".bpfleet-ready"), "w") as handle:
        handle.write(rootfs_digest() + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)
    return target, time.monotonic() - started


def host_dir(workdir: str, host: str) -> str:
    return os.path.join(workdir, host)


def mount_overlay(rootfs: str, workdir: str, host: str) -> str:
    base = host_dir(workdir, host)
    upper, work, merged = (os.path.join(base, part) for part in ("upper", "work", "root"))
    for path in (upper, work, merged):
        os.makedirs(path, exist_ok=True)
    # systemd sets the host name from /etc/hostname at boot (the rootfs has the builder's).
    os.makedirs(os.path.join(upper, "etc"), exist_ok=True)
    lab.write_file(os.path.join(upper, "etc", "hostname"), host + "\n")
    lab.run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={rootfs},upperdir={upper},workdir={work}", merged])
    return merged


def start_container(name: str, workdir: str, host: str, netns: str, root: str) -> subprocess.Popen:
    log = open(os.path.join(host_dir(workdir, host), "console.log"), "ab")
    try:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "--",
             "systemd-nspawn", "--boot", "--directory", root, "--machine", f"{lab.NS_PREFIX}-{name}-{host}",
             "--hostname", host, "--register=no", "--keep-unit", "--console=passive", "--system-call-filter=bpf",
             "--capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON",
             "--bind-ro", f"{lab.private_key_path(workdir)}.pub:/root/.ssh/authorized_keys"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()


def wait_for_ssh(name: str, workdir: str, host: str, process: subprocess.Popen) -> None:
    address = lab.host_addresses(host)["ipv4"]
    deadline = time.monotonic() + BOOT_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise lab.LabError(f"systemd-nspawn of {host} exited with rc={process.returncode}; console:\n"
                               + console_tail(workdir, host))
        result = lab.run(lab.ssh_command(name, workdir, address, "systemctl", "is-system-running", "--wait"),
                         check=False, timeout=60)
        state = result.stdout.strip()
        if result.returncode == 0 or state in ("degraded",):
            if state == "degraded":
                failed = lab.run(lab.ssh_command(name, workdir, address, "systemctl", "--failed", "--no-legend"),
                                 check=False).stdout
                lab.say(name, f"{host}: booted degraded: {failed.strip()}")
            return
        last = (result.stderr or result.stdout).strip()
        time.sleep(0.3)
    raise lab.LabError(f"{host} did not boot and answer SSH within {BOOT_TIMEOUT:.0f} s: {last}; console:\n"
                       + console_tail(workdir, host))


def console_tail(workdir: str, host: str, lines: int = 25) -> str:
    try:
        with open(os.path.join(host_dir(workdir, host), "console.log"), errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no console.log)"


def unmount_overlays(workdir: str) -> None:
    if not os.path.isdir(workdir):
        return
    for host in sorted(os.listdir(workdir)):
        merged = os.path.join(workdir, host, "root")
        if os.path.ismount(merged):
            lab.run(["umount", "--lazy", merged], check=False)


def teardown(name: str, workdir: str) -> list[str]:
    # Processes first (systemd-nspawn lives in the host's network namespace), then the mounts,
    # then bpfleet_lab's teardown removes namespaces and the workdir.
    state = lab.load_state(workdir) if os.path.exists(lab.state_path(workdir)) else None
    namespaces = lab.fleet_netns(name, state)
    pids = set()
    for netns in namespaces:
        pids |= lab.netns_pids(netns)
    if pids:
        lab.say(name, f"stopping {len(pids)} container process(es)")
        lab.terminate(pids)
    unmount_overlays(workdir)
    return lab.teardown(name, workdir)


def command_rootfs(args: argparse.Namespace) -> int:
    path, seconds = ensure_rootfs()
    print(json.dumps({"rootfs": path, "built_in_s": round(seconds, 1)}))
    return 0


def command_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    leftovers = teardown(args.name, args.workdir)
    if leftovers:
        raise lab.LabError("cannot clean up the previous fleet: " + "; ".join(leftovers))
    rootfs, built = ensure_rootfs()
    if built:
        lab.say(args.name, f"built {rootfs} in {built:.0f} s")
    workdir = args.workdir
    inventory = os.path.abspath(args.inventory or os.path.join(workdir, "inventory.yml"))
    hosts = lab.host_names(args.hosts)
    try:
        lab.require_tools()
        lab.check_workdir(workdir)
        os.makedirs(lab.control_dir(workdir), mode=0o700)
        os.chmod(workdir, 0o700)
        lab.write_file(os.path.join(workdir, lab.WORKDIR_MARKER), args.name + "\n")
        state = {"name": args.name, "workdir": workdir, "switch_netns": lab.switch_netns(args.name), "hosts": [],
                 "inventory": inventory, "kind": "nspawn", "rootfs": rootfs}
        lab.save_state(workdir, state)
        lab.make_controller_key(workdir)
        lab.create_switch(args.name)
        processes = {}
        for host in hosts:
            netns = lab.create_host_network(args.name, host)
            root = mount_overlay(rootfs, workdir, host)
            processes[host] = start_container(args.name, workdir, host, netns, root)
            # bpfleet_lab's `exec` and `status` look for an sshd pid: record the container's.
            state["hosts"].append({"name": host, "netns": netns, "nspawn_pid": processes[host].pid,
                                   **lab.host_addresses(host)})
            lab.save_state(workdir, state)
        for host in hosts:
            wait_for_ssh(args.name, workdir, host, processes[host])
            lab.say(args.name, f"{host}: booted, ssh root@{lab.host_addresses(host)['ipv4']} answers")
        os.makedirs(os.path.dirname(inventory) or ".", exist_ok=True)
        lab.write_file(inventory, lab.inventory_text(args.name, workdir, hosts))
        state["ready"] = True
        lab.save_state(workdir, state)
    except BaseException:
        if not args.keep_on_failure:
            teardown(args.name, workdir)
        raise
    lab.say(args.name, f"up: {args.hosts} systemd host(s) in {time.monotonic() - started:.1f} s; inventory {inventory}")
    return 0


def command_down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    leftovers = teardown(args.name, args.workdir)
    if leftovers:
        raise lab.LabError("teardown left things behind: " + "; ".join(leftovers))
    lab.say(args.name, f"down in {time.monotonic() - started:.1f} s")
    return 0


def command_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise lab.LabError("exec needs a command after --")
    address = lab.host_addresses(args.host)["ipv4"]
    # ssh joins its arguments with spaces for the remote shell: quote them.
    os.execvp("ssh", lab.ssh_command(args.name, args.workdir, address, shlex.join(command)))
    return 127


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command_name", required=True)
    commands.add_parser("rootfs", help="build or reuse the cached root filesystem").set_defaults(
        handler=command_rootfs, name=None, workdir=None)

    def add(command: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("--name", required=True, type=lab.fleet_name)
        sub.add_argument("--workdir", help=f"default {lab.DEFAULT_WORKDIR_BASE}/NAME")
        return sub

    up = add("up", "boot the fleet (tears down a previous one of the same name first)")
    up.add_argument("--hosts", required=True, type=lab.host_count)
    up.add_argument("--inventory")
    up.add_argument("--keep-on-failure", action="store_true")
    up.set_defaults(handler=command_up)
    add("down", "stop the containers and remove everything").set_defaults(handler=command_down)
    run_in = add("exec", "run a command on a host over SSH")
    run_in.add_argument("--host", required=True)
    run_in.add_argument("command", nargs=argparse.REMAINDER)
    run_in.set_defaults(handler=command_exec)
    args = parser.parse_args(argv)
    if args.name:
        args.workdir = os.path.abspath(args.workdir or lab.default_workdir(args.name))
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *lab.EXTRA_TOOL_DIRS])
    try:
        lab.require_root()
        return args.handler(args)
    except lab.LabError as exc:
        print(f"nspawn-lab: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
