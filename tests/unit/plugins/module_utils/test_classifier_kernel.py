# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Python model of the XDP filter (_classifier, what both lockout guards ask) decides every
packet as the compiled program does.

Random policies (port rules and rate limits: what is compiled into the program) are rendered here
and compiled, verified and pinned with BCC by one helper in a private bpffs (tests/fleet/
private_bpffs.py; nothing is attached anywhere). Hypothesis then draws random deny and allow
lists (written into the programs' list maps, as the policy and blocklist modules write them),
random packets (IPv4 and IPv6; TCP and UDP to ports near the rules' ports, ICMP and ICMPv6 with
neighbour discovery among them, another protocol, later fragments without ports) and, per
packet, which rate-limit buckets of its source are empty. Each packet goes through the XDP
program with BPF_PROG_TEST_RUN and through _classifier.xdp_verdict with the same lists; the
test asserts the same action (XDP_PASS or XDP_DROP), the same rule ids counted in `rule_stats`
(the deciding rule, and the first `log` rule), and the same rate limits taking a token (the
buckets in `rate_buckets`).

BPFLEET_CLASSIFIER_POLICIES (default 6) policies, BPFLEET_CLASSIFIER_EXAMPLES (default 300)
hypothesis examples of up to 8 packets each; BPFLEET_CLASSIFIER_SEED picks other policies.
"""

import ipaddress
import os
import random
import socket
import struct
import sys
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _classifier, _contract, _counters, _packing, _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))
import private_bpffs  # noqa: E402  (tests/fleet: compile and pin with BCC in a private bpffs)

POLICIES = int(os.environ.get("BPFLEET_CLASSIFIER_POLICIES") or 6)
EXAMPLES = int(os.environ.get("BPFLEET_CLASSIFIER_EXAMPLES") or 300)
SEED = int(os.environ.get("BPFLEET_CLASSIFIER_SEED") or 15)
XDP_VERDICTS = {1: "drop", 2: "pass"}   # XDP_DROP, XDP_PASS

# A small world, so that prefixes, packets and rules meet often.
V4_NET = ipaddress.ip_network("10.1.2.0/28")
V6_NET = ipaddress.ip_network("2001:db8:1::/124")
# Mostly narrow prefixes, so that many packets reach the port rules and the default.
PREFIX_LENGTHS = {4: (0, 24, 29, 30, 31, 32, 32, 32, 32, 32), 6: (0, 32, 125, 126, 127, 128, 128, 128, 128, 128)}
RULE_PORTS = (22, 53, 80, 443, 8080)
PACKET_PORTS = (21, 22, 23, 53, 79, 80, 81, 443, 2222, 8080, 8081)
ICMP_TYPES = {4: (0, 3, 8), 6: (1, 128, 129, 133, 135, 136, 137, 138)}
DESTINATION = {4: "10.9.9.9", 6: "2001:db8:9::9"}


# --- policies -----------------------------------------------------------------------------------

def random_rule(rng, proto_choices):
    proto = rng.choice(proto_choices)
    match = {"proto": proto}
    if proto != "icmp" and rng.random() < 0.7:
        low = rng.choice(RULE_PORTS)
        high = low if rng.random() < 0.6 else low + rng.choice((1, 2, 100))
        match["port"] = low if low == high else "%d-%d" % (low, high)
    return match


def random_policy(rng, index):
    """A valid policy with random port rules and rate limits (no lists: they live in maps)."""
    while True:
        ports = []
        for _rule in range(rng.randint(0, 6)):
            rule = random_rule(rng, ("tcp", "udp", "icmp", "any"))
            rule["action"] = rng.choice(("drop", "pass", "log"))
            rule["direction"] = rng.choice(("ingress", "ingress", "ingress", "egress"))
            ports.append(rule)
        if index == 0:
            # Two log rules that both match most packets: only the first one is the log rule.
            ports[:0] = [{"proto": "tcp", "action": "log"}, {"proto": "any", "action": "log"}]
        limits = [{"match": random_rule(rng, ("tcp", "udp", "icmp", "any")), "per_source": 1,
                   "burst": rng.randint(1, 3)} for _limit in range(rng.randint(0, 2))]
        raw = {"name": "cl-%d" % index, "interfaces": ["eth0"],
               "filter": {"default": rng.choice(("allow", "deny")), "ports": ports, "rate_limit": limits}}
        if any(rule["action"] == "log" for rule in ports):
            raw["log"] = {}
        try:
            return _policy.validate(raw, raw["name"])[0]
        except _policy.PolicyError:
            continue


class Loaded:
    """One compiled policy: its XDP program and the maps the test fills and reads, by fd."""

    def __init__(self, model, entry):
        self.model = model
        self.filter = _render.render(model)["filter"]
        self.xdp = bpf.prog_get_fd_by_id(entry["programs"]["prog_xdp"]["id"])
        self.maps = dict((name, bpf.map_get_fd_by_id(entry["maps"][name]))
                         for name in _contract.LIST_MAPS + ("rule_stats", "rate_buckets"))

    def set_lists(self, lists):
        for name, version, _list in _contract.LIST_FAMILIES:
            fd = self.maps[name]
            for key in bpf.map_keys(fd, _contract.lpm_key_size(version)):
                bpf.map_delete(fd, bytes(key))
            value = struct.pack("=I", _contract.RULE_IDS[_list])
            for key in lists[name]:
                bpf.map_update(fd, key, value)

    def clear_buckets(self):
        fd = self.maps["rate_buckets"]
        for key in bpf.map_keys(fd, _contract.RATE_KEY_SIZE):
            bpf.map_delete(fd, bytes(key))

    def empty_bucket(self, rule, source):
        """A bucket of this source with no token left, refilled a moment ago (rate 1/s)."""
        key = struct.pack("=IB3x16s", rule, source.version, source.packed.ljust(16, b"\0"))
        bpf.map_update(self.maps["rate_buckets"], key, struct.pack("=QQ", 0, time.monotonic_ns()))

    def bucket_rules(self):
        return sorted(struct.unpack_from("=I", bytes(key))[0]
                      for key in bpf.map_keys(self.maps["rate_buckets"], _contract.RATE_KEY_SIZE))

    def rule_packets(self):
        found = {}
        for (_ifindex, rule), (packets, _bytes) in _counters.read_rule_counters(self.maps["rule_stats"]).items():
            found[rule] = found.get(rule, 0) + packets
        return found

    def close(self):
        for fd in [self.xdp] + list(self.maps.values()):
            bpf.close_fd(fd)


@pytest.fixture(scope="module")
def kernel():
    reason = private_bpffs.skip_reason()
    if reason:
        pytest.skip(reason)
    rng = random.Random(SEED)
    models = [random_policy(rng, index) for index in range(POLICIES)]
    sources = []
    for model in models:
        rendered = _render.render(model)
        sources.append({"name": model["name"], "source": rendered["source"], "programs": rendered["programs"]})
    with private_bpffs.pinned_policies(sources, timeout=120) as report:
        errors = dict((name, entry["error"]) for name, entry in report.items() if "error" in entry)
        assert not errors, errors
        loaded = [Loaded(model, report[model["name"]]) for model in models]
    yield loaded
    for policy in loaded:
        policy.close()


# --- lists and packets ------------------------------------------------------------------------------

def prefixes(version):
    net = V4_NET if version == 4 else V6_NET
    bits = 32 if version == 4 else 128

    def key(choice):
        offset, length = choice
        address = int(net.network_address) + offset
        network = address >> (bits - length) << (bits - length) if length else 0
        return _packing.lpm_key(version, network, length)

    return st.tuples(st.integers(0, net.num_addresses - 1), st.sampled_from(PREFIX_LENGTHS[version])).map(key)


list_sets = st.fixed_dictionaries(dict(
    (name, st.sets(prefixes(version), max_size=3)) for name, version, _list in _contract.LIST_FAMILIES))


@st.composite
def packets(draw):
    version = draw(st.sampled_from((4, 6)))
    net = V4_NET if version == 4 else V6_NET
    source = net.network_address + draw(st.integers(0, net.num_addresses - 1))
    kind = draw(st.sampled_from(("tcp", "tcp", "udp", "icmp", "other", "fragment")))
    if kind in ("tcp", "udp"):
        proto = _classifier.PROTO_TCP if kind == "tcp" else _classifier.PROTO_UDP
        return _classifier.Packet(source, proto, draw(st.sampled_from(PACKET_PORTS)), None), False
    if kind == "icmp":
        proto = _classifier.PROTO_ICMP if version == 4 else _classifier.PROTO_ICMPV6
        return _classifier.Packet(source, proto, None, draw(st.sampled_from(ICMP_TYPES[version]))), False
    if kind == "other":
        return _classifier.Packet(source, 47, None, None), False     # GRE: no ports, not ICMP
    # A later fragment: no transport header, so no ports and no ICMP type for the filter.
    proto = draw(st.sampled_from((_classifier.PROTO_TCP, _classifier.PROTO_UDP,
                                  _classifier.PROTO_ICMP if version == 4 else _classifier.PROTO_ICMPV6)))
    return _classifier.Packet(source, proto, None, None), True


def frame(packet, fragment):
    """The Ethernet frame of a packet; a later fragment carries payload bytes, not an L4 header."""
    if fragment:
        l4 = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    elif packet.proto in (_classifier.PROTO_TCP, _classifier.PROTO_UDP):
        ports = struct.pack("!HH", 40000, packet.dst_port)
        l4 = ports + (struct.pack("!IIBBHHH", 1, 0, 5 << 4, 0x02, 65535, 0, 0)
                      if packet.proto == _classifier.PROTO_TCP else struct.pack("!HH", 8, 0))
    elif packet.proto in (_classifier.PROTO_ICMP, _classifier.PROTO_ICMPV6):
        l4 = struct.pack("!BBHI", packet.icmp_type, 0, 0, 0)
    else:
        l4 = b"\0" * 8
    if packet.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x0010 if fragment else 0x4000, 64, packet.proto,
                         0, packet.source.packed, socket.inet_aton(DESTINATION[4]))
        ethertype = 0x0800
    else:
        next_header = packet.proto
        if fragment:
            l4 = struct.pack("!BBHI", packet.proto, 0, 0x0010, 7) + l4   # fragment header, offset 2 (x8 bytes)
            next_header = 44
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), next_header, 64, packet.source.packed,
                         socket.inet_pton(socket.AF_INET6, DESTINATION[6]))
        ethertype = 0x86DD
    return bytes.fromhex("020000000001020000000002") + struct.pack("!H", ethertype) + ip + l4


def model_lists(lists, form):
    if form == "keys":
        return dict((name, _packing.KeySet(version, lists[name])) for name, version, _list in _contract.LIST_FAMILIES)
    return dict((name, _packing.PackedList.from_keys(version, lists[name], _contract.RULE_IDS[_list]))
                for name, version, _list in _contract.LIST_FAMILIES)


CHECKED = {"packets": 0, "examples": 0, "started": None}


@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), lists=list_sets, sent=st.lists(packets(), min_size=1, max_size=8))
def test_the_model_decides_every_packet_as_the_xdp_program(kernel, data, lists, sent, record_property):
    CHECKED["started"] = CHECKED["started"] or time.monotonic()
    policy = kernel[data.draw(st.integers(0, len(kernel) - 1), label="policy")]
    limit_ids = [limit["id"] for limit in policy.filter["rate_limit"]]
    policy.set_lists(lists)
    for packet, fragment in sent:
        empty = data.draw(st.sets(st.sampled_from(limit_ids)) if limit_ids else st.just(set()), label="empty buckets")
        policy.clear_buckets()
        for rule in empty:
            policy.empty_bucket(rule, packet.source)
        before = policy.rule_packets()
        retval = bpf.prog_test_run(policy.xdp, frame(packet, fragment))["retval"]
        after = policy.rule_packets()
        counted = sorted(rule for rule in after if after[rule] != before.get(rule, 0))

        verdicts = [_classifier.xdp_verdict(packet, policy.filter, model_lists(lists, form), empty)
                    for form in ("keys", "packed")]
        assert verdicts[0] == verdicts[1], "the list forms disagree"
        verdict = verdicts[0]
        expected_counted = sorted(set([verdict.rule] + ([verdict.log_rule] if verdict.log_rule != _contract.RULE_NONE
                                                        else [])))
        expected_buckets = sorted(set(limit["id"] for limit in verdict.rate_limits) | empty)
        context = "policy %s, packet %s%s, lists %s, verdict %s" % (
            policy.model["name"], packet, " (later fragment)" if fragment else "",
            dict((name, sorted(_packing.key_parts(key) for key in keys)) for name, keys in lists.items()), verdict)
        event("a packet decided by %s: %s" % (verdict.kind, verdict.action))
        assert XDP_VERDICTS.get(retval) == ("pass" if verdict.action == "pass" else "drop"), context
        assert counted == expected_counted, context
        assert policy.bucket_rules() == expected_buckets, context
        CHECKED["packets"] += 1
    CHECKED["examples"] += 1


def test_report_how_much_was_checked(kernel, record_property):
    """Runs after the property (file order): the figures the report and the docs quote."""
    seconds = time.monotonic() - (CHECKED["started"] or time.monotonic())
    record_property("classifier_examples", CHECKED["examples"])
    record_property("classifier_packets", CHECKED["packets"])
    record_property("classifier_seconds", round(seconds, 1))
    print("classifier vs kernel: %d policies, %d examples, %d packets in %.1f s" % (
        len(kernel), CHECKED["examples"], CHECKED["packets"], seconds))
    assert CHECKED["packets"] > 0
