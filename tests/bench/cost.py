"""Per-packet cost of each generated program variant, with BPF_PROG_TEST_RUN, against XDP_PASS.

Policies are rendered here by the collection's own renderer and compiled, verified and pinned
by BCC under /usr/bin/python3 in a private mount namespace with its own bpffs (nothing is
attached to an interface), as tests/unit/plugins/module_utils/test_http_kernel.py does. This
process then reaches the programs by id and runs them on frames with a large repeat count;
the kernel reports the mean time per run. Each figure is the median (and min) of several
such calls. The ring buffer is drained before every call so records never hit a full ring.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys

from _common import COLLECTIONS, BenchError, deny_list, log, summary
from private_bpffs import pinned_policies

sys.path.insert(0, str(COLLECTIONS))
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _maps, _policy, _ringbuf
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

ALL_FIELDS = list(_policy.LOG_FIELDS)
LIST_SIZE = 100000
DENIED_V4, DENIED_V6 = "198.51.100.9", "2001:db8:bad::9"
SRC = {4: "203.0.113.12", 6: "2001:db8:100::12"}
DST = {4: "203.0.113.11", 6: "2001:db8:100::11"}
BASE_FILTER = {"default": "allow", "deny": ["198.51.100.0/24", "2001:db8:bad::/48"]}
VARIANTS = {
    "pass-through": {},
    "filter only": {"filter": BASE_FILTER},
    "log only (L3/L4, all fields)": {"log": {"fields": ALL_FIELDS}},
    "filter + L3/L4 log": {"filter": BASE_FILTER, "log": {"fields": ALL_FIELDS}},
    "filter + log, sample 1/100": {"filter": BASE_FILTER, "log": {"fields": ALL_FIELDS, "sample": "1/100"}},
    "filter + log + HTTP capture": {"filter": BASE_FILTER,
                                    "log": {"fields": ALL_FIELDS, "http": {"ports": [80]}}},
    # Header rewrites (docs/rewrite.md). BPF_PROG_TEST_RUN runs a program `repeat` times on one
    # skb: the first run rewrites, the others find the header already right (DSCP) or untagged
    # (strip), so these rows are the cost of matching and deciding, with one write per call.
    "rewrite DSCP ef (egress)": {"rewrite": [{"direction": "egress", "match": {"proto": "udp"}, "dscp": "ef"}]},
    "rewrite VLAN strip (ingress)": {"rewrite": [{"direction": "ingress", "vlan": "strip"}]},
}
HTTP_REQUEST = (b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: wrk\r\n"
                b"Authorization: Bearer abcdef0123456789\r\nAccept: */*\r\n\r\n")

XDP_PASS_SOURCE = "int bench_pass(struct xdp_md *ctx) { return XDP_PASS; }"


def udp_frame(family: int, src: str | None = None, payload: bytes = b"x" * 18) -> bytes:
    src = src or SRC[family]
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    return ip_frame(family, src, DST[family], 17, udp)


def tcp_frame(family: int, payload: bytes, dport: int = 80) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    return ip_frame(family, SRC[family], DST[family], 6, tcp)


def ip_frame(family, src, dst, proto, l4):
    if family == 6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, socket.inet_aton(src),
                         socket.inet_aton(dst))
        ethertype = 0x0800
    eth = bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + struct.pack("!H", ethertype)
    return eth + ip + l4


def v6_list(size: int) -> list[str]:
    """Disjoint IPv6 /48s derived from the IPv4 list (so the trie is as deep and as full)."""
    out = []
    for prefix in deny_list(size, DENIED_V4)[:-1]:
        address = int(ipaddress.ip_network(prefix).network_address)
        out.append(str(ipaddress.IPv6Network(((0x2a00 << 112) | (address << 80), 48))))
    return out


def compile_all(names) -> dict:
    policies = []
    for name, body in VARIANTS.items():
        raw = dict(body, name=names[name], interfaces=["eth0"])
        model = _policy.validate(raw, names[name])[0]
        rendered = _render.render(model)
        policies.append({"name": names[name], "source": rendered["source"], "programs": rendered["programs"]})
    policies.append({"name": "xdp_pass", "source": XDP_PASS_SOURCE,
                     "programs": [{"function": "bench_pass", "hook": "xdp", "pin": "prog_xdp"}]})
    fds = {}
    try:
        with pinned_policies(policies) as report:
            errors = dict((name, entry["error"]) for name, entry in report.items() if "error" in entry)
            if errors:
                raise BenchError("BCC could not compile: %s" % errors)
            for name, entry in report.items():
                fds[name] = {"programs": {pin: bpf.prog_get_fd_by_id(info["id"])
                                          for pin, info in entry["programs"].items()},
                             "maps": {m: bpf.map_get_fd_by_id(i) for m, i in entry["maps"].items()}}
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    return fds


def fill_lists(maps: dict, v4: list[str], v6: list[str]) -> None:
    for name, entries in (("deny_v4", v4), ("deny_v6", v6)):
        if name in maps:
            desired = _maps.desired_entries([[cidr, _policy.RULE_IDS["deny"]] for cidr in entries])
            _maps.apply_delta(maps[name], desired, [])


def ns_per_packet(prog_fd, ring, frame, repeat, rounds) -> dict:
    values = []
    for _round in range(rounds):
        if ring is not None:
            ring.drain()
        values.append(bpf.prog_test_run(prog_fd, frame, repeat=repeat)["duration_ns"])
    if ring is not None:
        ring.drain()
    return summary(values)


def run_all(smoke: bool) -> dict:
    repeat, rounds = (2000, 3) if smoke else (20000, 7)
    size = 1000 if smoke else LIST_SIZE
    names = {variant: "bc%d" % index for index, variant in enumerate(VARIANTS)}
    log(f"  compiling {len(VARIANTS)} variants and XDP_PASS with BCC")
    fds = compile_all(names)
    v4 = deny_list(size, DENIED_V4)
    v6 = v6_list(size) + [DENIED_V6 + "/128"]
    rings = {}
    for name in names.values():
        fill_lists(fds[name]["maps"], v4, v6)
        if "events" in fds[name]["maps"]:
            rings[name] = _ringbuf.RingBuffer(fds[name]["maps"]["events"])
    result = {"repeat": repeat, "rounds": rounds, "deny_entries": {"v4": len(v4), "v6": len(v6)}, "rows": [],
              "baseline": {}}
    for family in (4, 6):
        result["baseline"][str(family)] = ns_per_packet(fds["xdp_pass"]["programs"]["prog_xdp"], None,
                                                        udp_frame(family), repeat, rounds)
        log(f"  XDP_PASS IPv{family}: {result['baseline'][str(family)]['median']:.0f} ns")
    for variant, name in names.items():
        programs = fds[name]["programs"]
        ring = rings.get(name)
        for family in (4, 6):
            cases = [("prog_xdp", "UDP, allowed source", udp_frame(family))]
            if "filter" in VARIANTS[variant]:
                cases.append(("prog_xdp", "UDP, denied source",
                              udp_frame(family, DENIED_V4 if family == 4 else DENIED_V6)))
            if "prog_tc_ingress" in programs:
                cases.append(("prog_tc_ingress", "UDP, allowed source", udp_frame(family)))
            if "prog_tc_egress" in programs and "rewrite" in VARIANTS[variant]:
                cases.append(("prog_tc_egress", "UDP, rewritten", udp_frame(family)))
            if "http" in VARIANTS[variant].get("log", {}):
                cases.append(("prog_tc_ingress", "HTTP GET, %d B" % len(HTTP_REQUEST),
                              tcp_frame(family, HTTP_REQUEST)))
            for pin, packet, frame in cases:
                ns = ns_per_packet(programs[pin], ring, frame, repeat, rounds)
                row = {"variant": variant, "program": pin, "packet": f"IPv{family} {packet}", "family": str(family),
                       "ns": ns}
                result["rows"].append(row)
                log(f"  {variant:32} {pin:16} {row['packet']:30} {ns['median']:7.0f} ns")
    # The logging target: the whole path of an allowed IPv4 packet on a policy that logs every
    # L3/L4 field (XDP program + tc ingress record), minus XDP_PASS.
    by = {(r["variant"], r["program"], r["packet"]): r["ns"]["median"] for r in result["rows"]}
    key = "log only (L3/L4, all fields)"
    path = by[(key, "prog_xdp", "IPv4 UDP, allowed source")] + by[(key, "prog_tc_ingress", "IPv4 UDP, allowed source")]
    result["logging_over_pass"] = path - result["baseline"]["4"]["median"]
    result["logging_over_pass_what"] = "XDP + tc ingress of an allowed IPv4 packet, every field logged, minus XDP_PASS"
    for ring in rings.values():
        ring.close()
    for entry in fds.values():
        for fd in list(entry["programs"].values()) + list(entry["maps"].values()):
            bpf.close_fd(fd)
    return result


if __name__ == "__main__":
    json.dump(run_all("--smoke" in sys.argv), sys.stdout, indent=1)
