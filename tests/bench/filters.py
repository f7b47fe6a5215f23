"""Filter throughput: bpfleet against no filter, nftables, ipset, iptables and xdp-filter.

Topology: a veth pair `bench0` straight from lab host h1 (sender) into lab host h2 (receiver),
192.0.2.1 -> 192.0.2.2, beside the lab's bridge (SSH keeps using eth0, so no filter can cut
the controller off). h1 floods 64-byte UDP frames with bpfleet-blast in XDP live-frames mode
(several M pps offered, more than any receiver here takes), from the allowed source
192.0.2.1 or the denied source 192.0.2.66 (the last entry of every deny list).

h2's veth runs its NAPI poll in a kernel thread (threaded NAPI) pinned to CPU 1 while the
sender is pinned to CPU 0, so everything the receiver does for a packet (XDP, netfilter,
IP, UDP) runs in that one thread and its CPU time is measured exactly (schedstat). Counted
per run, on h2:
  processed   frames the receiver's NAPI took off the veth ring (ethtool rx_queue_0_xdp_packets)
  delivered   datagrams that reached UDP (Udp NoPorts: nothing listens on port 9)
  filtered    processed - delivered
and from them: received pps (delivered / s), dropped pps (filtered / s), and the receiver's
capacity in packets per CPU-second (processed / NAPI thread CPU time), which does not depend
on how much CPU the other tenants of this shared machine left us.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from _common import (
    COLLECTIONS,
    HERE,
    BenchError,
    Fleet,
    blast,
    blast_binary,
    cpu_busy_seconds,
    deny_list,
    flood_mode,
    log,
    run,
    summary,
    thread_cpu_ns,
)

IFACE = "bench0"
SENDER_MAC, RECEIVER_MAC = "02:62:66:6c:01:01", "02:62:66:6c:01:02"
SENDER_IP, RECEIVER_IP, DENIED_IP = "192.0.2.1", "192.0.2.2", "192.0.2.66"
SOURCES = {"allowed": SENDER_IP, "denied": DENIED_IP}
POLICY_NAME = "bench-filter"

FULL_SIZES = {
    "bpfleet": [10, 1000, 10000, 100000, 1000000],
    "nftables": [10, 1000, 10000, 100000, 1000000],
    "ipset": [10, 1000, 10000, 100000, 1000000],
    # Linear rules: about 9 ns per rule per packet (LAB-NOTES); 10,000 rules already take the
    # receiver down to about 10 k pps, so larger lists are left out to stay in the time budget.
    "iptables": [10, 1000, 10000],
    # xdp-filter 1.3.1 refuses more than 10,000 IPv4 entries.
    "xdp-filter": [10, 1000, 10000],
}
SMOKE_SIZES = {name: [10] for name in FULL_SIZES}


def prepare(fleet: Fleet) -> dict:
    """The veth pair, addresses, GRO, threaded NAPI on the receiver; returns the NAPI thread id."""
    h2 = fleet.netns("h2")
    fleet.ns("h1", "ip", "link", "add", IFACE, "address", SENDER_MAC, "type", "veth", "peer", "name", IFACE,
             "address", RECEIVER_MAC, "netns", h2)
    for host, address in (("h1", SENDER_IP), ("h2", RECEIVER_IP)):
        fleet.ns(host, "ip", "addr", "add", address + "/24", "dev", IFACE)
        fleet.ns(host, "ip", "link", "set", IFACE, "up")
        # A veth peer drops XDP-sent frames unless its NAPI is on (LAB-NOTES).
        fleet.ns(host, "ethtool", "-K", IFACE, "gro", "on")
    fleet.ns("h1", "ip", "neigh", "replace", RECEIVER_IP, "lladdr", RECEIVER_MAC, "dev", IFACE)
    before = napi_threads()
    fleet.ns("h2", "sh", "-c", f"echo 1 > /sys/class/net/{IFACE}/threaded")
    new = napi_threads() - before
    if len(new) != 1:
        raise BenchError(f"expected one new NAPI thread for {IFACE} in {h2}, found {sorted(new)}")
    tid = new.pop()
    run(["taskset", "-pc", "1", str(tid)])
    # The machine is shared: a higher weight lets the receiver have most of CPU 1 while it is
    # measured, so pps figures are close to what one core does (capacity is measured apart).
    run(["renice", "-n", "-15", "-p", str(tid)])
    return {"napi_tid": tid}


def ensure_link(fleet: Fleet) -> dict:
    """prepare() once per fleet (the agent and HTTP sections use the same link)."""
    if not getattr(fleet, "bench_link", None):
        fleet.bench_link = prepare(fleet)
    return fleet.bench_link


def napi_threads() -> set:
    found = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith(f"napi/{IFACE}-"):
                found.add(int(comm.parent.name))
        except OSError:
            continue
    return found


def receiver_counters(fleet: Fleet) -> dict:
    text = fleet.ns("h2", "sh", "-c", f"ethtool -S {IFACE}; cat /proc/net/snmp").stdout
    processed = int(re.search(r"rx_queue_0_xdp_packets: (\d+)", text).group(1))
    udp = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")][:2]
    return {"processed": processed, "delivered": int(dict(zip(udp[0], udp[1], strict=True))["NoPorts"])}


def measure(fleet: Fleet, napi_tid: int, source: str, seconds: float) -> dict:
    before = receiver_counters(fleet)
    cpu_before, busy_before = thread_cpu_ns(napi_tid), cpu_busy_seconds()
    report = send(fleet, source, seconds)
    time.sleep(0.05)
    after = receiver_counters(fleet)
    napi_s = (thread_cpu_ns(napi_tid) - cpu_before) / 1e9
    busy = cpu_busy_seconds() - busy_before
    processed = after["processed"] - before["processed"]
    delivered = after["delivered"] - before["delivered"]
    wall = report["seconds"]
    return {
        "offered_pps": report["pps"], "processed": processed, "delivered": delivered,
        "filtered": processed - delivered, "seconds": wall,
        "rx_pps": delivered / wall, "drop_pps": (processed - delivered) / wall, "processed_pps": processed / wall,
        "receiver_cpu_s": napi_s, "capacity_pps_per_core": processed / napi_s if napi_s > 0 else None,
        "machine_busy_cores": busy / wall,
    }


def send(fleet: Fleet, source: str, seconds: float) -> dict:
    """Flood from h1 (pinned to CPU 0) for `seconds`; the sender's JSON report."""
    # nice -15 like the receiver: on a shared machine the offered load must stay above what
    # the receiver takes, or the figures would measure the sender's share of CPU 0.
    result = run(["nice", "-n", "-15", "taskset", "-c", "0", "ip", "netns", "exec", fleet.netns("h1"), blast_binary(),
                  "--iface", IFACE, "--src", source, "--dst", RECEIVER_IP, "--dst-mac", RECEIVER_MAC,
                  "--duration", str(seconds), "--mode", flood_mode(), "--size", "64"], timeout=seconds + 60)
    return blast.parse_report(result.stdout)


# --- the filters -------------------------------------------------------------------------------

class NoFilter:
    name = "none"

    def __init__(self, fleet, workdir):
        self.fleet = fleet

    def load(self, prefixes):
        return 0.0

    def clear(self):
        pass


class Nftables:
    """One `inet` table: an interval set and one rule at prerouting, priority raw (-300)."""

    name = "nftables"

    def __init__(self, fleet, workdir):
        self.fleet, self.workdir = fleet, workdir

    def load(self, prefixes):
        self.clear()
        path = self.workdir / "nft-bench.nft"
        with path.open("w") as out:
            out.write("table inet bench {\n  set deny4 {\n    type ipv4_addr\n    flags interval\n    elements = {\n")
            for start in range(0, len(prefixes), 1000):
                out.write("      " + ", ".join(prefixes[start:start + 1000]) + ",\n")
            out.write("    }\n  }\n  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n"
                      "    ip saddr @deny4 drop\n  }\n}\n")
        started = time.monotonic()
        self.fleet.ns("h2", "nft", "-f", path, timeout=900)
        return time.monotonic() - started

    def clear(self):
        self.fleet.ns("h2", "nft", "delete", "table", "inet", "bench", check=False)


class Ipset:
    """ipset hash:net and one iptables rule in raw PREROUTING."""

    name = "ipset"

    def __init__(self, fleet, workdir):
        self.fleet, self.workdir = fleet, workdir

    def load(self, prefixes):
        self.clear()
        path = self.workdir / "ipset-bench.txt"
        with path.open("w") as out:
            out.write(f"create bench4 hash:net family inet hashsize 65536 maxelem {max(65536, 2 * len(prefixes))}\n")
            for prefix in prefixes:
                out.write(f"add bench4 {prefix}\n")
        started = time.monotonic()
        self.fleet.ns("h2", "sh", "-c", f"ipset restore < {path}", timeout=900)
        self.fleet.ns("h2", "iptables", "-t", "raw", "-A", "PREROUTING", "-m", "set", "--match-set", "bench4",
                      "src", "-j", "DROP")
        return time.monotonic() - started

    def clear(self):
        self.fleet.ns("h2", "iptables", "-t", "raw", "-F", "PREROUTING", check=False)
        self.fleet.ns("h2", "ipset", "destroy", "bench4", check=False)


class Iptables:
    """One DROP rule per prefix in raw PREROUTING, loaded with iptables-restore."""

    name = "iptables"

    def __init__(self, fleet, workdir):
        self.fleet, self.workdir = fleet, workdir

    def load(self, prefixes):
        self.clear()
        path = self.workdir / "iptables-bench.rules"
        with path.open("w") as out:
            out.write("*raw\n:PREROUTING ACCEPT [0:0]\n")
            for prefix in prefixes:
                out.write(f"-A PREROUTING -s {prefix} -j DROP\n")
            out.write("COMMIT\n")
        started = time.monotonic()
        self.fleet.ns("h2", "sh", "-c", f"iptables-restore --noflush < {path}", timeout=900)
        return time.monotonic() - started

    def clear(self):
        self.fleet.ns("h2", "iptables", "-t", "raw", "-F", "PREROUTING", check=False)


class XdpFilter:
    """xdp-filter (xdp-tools), IPv4 feature only, native mode; exact addresses only.

    It matches whole addresses, not prefixes: it gets each prefix's first address. The first
    entry goes in through its CLI (which also shows the value layout it writes); the rest
    through `bpftool batch` with the same value, because one CLI run per address would take
    minutes for 10,000 entries.
    """

    name = "xdp-filter"
    MAP = "/sys/fs/bpf/xdp-filter/filter_ipv4"

    def __init__(self, fleet, workdir):
        self.fleet, self.workdir = fleet, workdir

    def load(self, prefixes):
        self.clear()
        addresses = [p.split("/")[0] for p in prefixes]
        started = time.monotonic()
        self.fleet.exec("h2", "xdp-filter", "load", "-m", "native", "-f", "ipv4", IFACE)
        self.fleet.exec("h2", "xdp-filter", "ip", addresses[-1], "-m", "src")
        dump = self.fleet.exec("h2", "bpftool", "-j", "map", "dump", "pinned", self.MAP).stdout
        value = yaml.safe_load(dump)[0]["values"][0]["value"]
        if isinstance(value, list):  # bpftool -j without BTF: the bytes as hex strings
            value_hex = "".join("%02x" % int(b, 16) for b in value)
        else:
            value_hex = int(value).to_bytes(8, "little").hex()
        path = self.workdir / "xdp-filter.addresses"
        path.write_text("\n".join(addresses[:-1]) + "\n")
        if len(addresses) > 1:
            count = int(self.fleet.exec("h2", "/usr/bin/python3", HERE / "xdpfilter_load.py", COLLECTIONS, self.MAP,
                                        value_hex, path, timeout=900).stdout.strip())
        else:
            count = 1
        if count != len(set(addresses)):
            raise BenchError(f"xdp-filter holds {count} addresses, expected {len(set(addresses))}")
        return time.monotonic() - started

    def clear(self):
        self.fleet.exec("h2", "xdp-filter", "unload", "--all", IFACE, check=False)


class Bpfleet:
    """bpfleet.core.policy over SSH (the product's own path): XDP on bench0, deny list in a file.

    Sizes are applied in increasing order, so each step is a list delta on the running program
    (no compile after the first); the load time is the wall time of that playbook run.
    """

    name = "bpfleet"

    def __init__(self, fleet, workdir):
        self.fleet, self.workdir = fleet, workdir
        self.applied = []

    def load(self, prefixes):
        list_path = self.workdir / "bpfleet-deny.txt"
        list_path.write_text("\n".join(prefixes) + "\n")
        policy = {"name": POLICY_NAME, "interfaces": [IFACE], "xdp_mode": "native",
                  "filter": {"default": "allow", "deny": [{"file": list_path.name}]}}
        policy_path = self.workdir / "bpfleet-filter.yml"
        policy_path.write_text(yaml.safe_dump(policy))
        outcome = self.fleet.playbook([{"name": "bench filter", "hosts": "h2", "tasks": [
            {"name": "apply", "bpfleet.core.policy": {"src": str(policy_path)}}]}])
        result = outcome["results"]["h2"][0]
        self.applied.append({"entries": len(prefixes), "seconds": outcome["seconds"],
                             "compiled": result.get("compiled"), "changed": result.get("changed")})
        mode = (result.get("attachments") or {}).get(IFACE)
        if mode not in (None, "native", "xdp", "drv") and "native" not in str(mode):
            log(f"  bpfleet attach mode on {IFACE}: {mode}")
        return outcome["seconds"]

    def clear(self):
        self.fleet.playbook([{"name": "bench filter off", "hosts": "h2", "tasks": [
            {"name": "remove", "bpfleet.core.policy": {"name": POLICY_NAME, "state": "absent"}}]}])


FILTERS = (NoFilter, Bpfleet, Nftables, Ipset, Iptables, XdpFilter)


LATE_SIZE = 100000   # larger lists are measured in a second pass, only while the time budget lasts


def run_all(fleet: Fleet, workdir: Path, smoke: bool, repeats: int, seconds: float, deadline: float,
            only: list | None = None) -> dict:
    """Every filter with lists up to 100,000 entries first, then the 1,000,000-entry lists
    while the run's time budget lasts (bpfleet's from scratch: policy removed, then applied)."""
    setup = ensure_link(fleet)
    sizes = SMOKE_SIZES if smoke else FULL_SIZES
    results = {"setup": setup, "runs": [], "loads": [], "skipped": [], "versions": versions(fleet)}
    chosen = [cls for cls in FILTERS if not only or cls.name in only or cls is NoFilter]
    for late in (False, True):
        for cls in chosen:
            wanted = [0] if cls is NoFilter else sizes[cls.name]
            wanted = [size for size in wanted if (size > LATE_SIZE) == late]
            if not wanted:
                continue
            backend = cls(fleet, workdir)
            for size in wanted:
                if late and time.monotonic() > deadline:
                    results["skipped"].append({"filter": cls.name, "size": size,
                                               "why": "not started: the run's 20-minute budget was used up"})
                    log(f"  skip {cls.name} {size}: out of time budget")
                    continue
                measure_size(fleet, backend, size, setup, results, repeats, seconds)
            try:
                backend.clear()
            except BenchError as error:
                log(f"  clearing {cls.name} failed: {error}")
            if cls is Bpfleet:
                results.setdefault("bpfleet_applies", []).extend(backend.applied)
    return results


def measure_size(fleet, backend, size, setup, results, repeats, seconds):
    prefixes = deny_list(size, DENIED_IP) if size else []
    try:
        load_s = backend.load(prefixes)
    except (BenchError, TimeoutError) as error:
        results["skipped"].append({"filter": backend.name, "size": size, "why": str(error)[-500:]})
        log(f"  {backend.name} {size}: load failed: {str(error)[-300:]}")
        return
    results["loads"].append({"filter": backend.name, "size": size, "seconds": load_s})
    for source_name, source in SOURCES.items():
        samples = [measure(fleet, setup["napi_tid"], source, seconds) for _repeat in range(repeats)]
        entry = {"filter": backend.name, "size": size, "source": source_name, "samples": samples}
        for key in ("rx_pps", "drop_pps", "processed_pps", "capacity_pps_per_core", "receiver_cpu_s",
                    "machine_busy_cores", "offered_pps"):
            entry[key] = summary([s[key] for s in samples if s[key] is not None])
        results["runs"].append(entry)
        log(f"  {backend.name:10} {size:>8} {source_name:7} rx {entry['rx_pps']['median']:>11,.0f} pps  "
            f"dropped {entry['drop_pps']['median']:>11,.0f} pps  capacity "
            f"{entry['capacity_pps_per_core'].get('median', 0):>11,.0f} pkt/CPU-s  (load {load_s:.1f} s)")


def versions(fleet: Fleet) -> dict:
    found = {}
    for name, argv in (("nft", ["nft", "--version"]), ("iptables", ["iptables", "-V"]),
                       ("ipset", ["ipset", "--version"]), ("xdp-filter", ["xdp-filter", "--version"])):
        result = run(argv, check=False)
        found[name] = (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) \
            else "?"
    return found
