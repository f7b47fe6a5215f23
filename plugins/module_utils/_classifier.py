# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The XDP filter's decision, in Python: one model of classify() in bpf/bpfleet.c.j2.

Both lockout guards ask it (bpfleet.core.policy before it applies a policy, bpfleet.core.blocklist
before it edits a list), and tests/unit/plugins/module_utils/test_classifier_kernel.py runs random
policies and packets through the compiled program (BPF_PROG_TEST_RUN) and through this model
and asserts the same verdict. Change the two together.

The order, as in the kernel:
  1. ICMPv6 neighbour discovery passes (IPv6 cannot live without it);
  2. an allow entry containing the source passes, then a deny entry containing it drops
     (longest-prefix lookups in the list maps);
  3. the first ingress port rule that matches and drops or passes decides (a `log` rule only
     marks the packet);
  4. else filter.default.
A packet that passes by anything but an allow entry then meets the rate limits (each one that
matches takes a token from the source's bucket; an empty bucket drops it).

`filter_section` is the rendered policy's "filter" ({"default", "ports", "rate_limit"}, rules as
_policy.validate() makes them: proto, port_low, port_high, direction, action, id, name); `lists`
maps a list map name (deny_v4, ...) to an object with `matches(address int)` -> [(network int,
prefix length)] of every entry containing the address, shortest first (_packing.PackedList,
EditedList, KeySet). Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import ipaddress

from ansible_collections.bpfleet.core.plugins.module_utils import _contract

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
NDP_FIRST, NDP_LAST = 133, 137      # ICMPV6_NDP_FIRST, ICMPV6_NDP_LAST in bpf/include/bpfleet_parse.h
SSH_PORT = 22
_PROTO_NUMBERS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}


class Packet(collections.namedtuple("Packet", "source proto dst_port icmp_type")):
    """What the filter looks at: the source address (ipaddress), the IP protocol number, the
    destination port (None without a TCP or UDP header, as for a later fragment) and the ICMP
    type (None unless ICMP)."""

    @classmethod
    def tcp(cls, source, port=SSH_PORT):
        return cls(source, PROTO_TCP, port, None)

    @property
    def version(self):
        return self.source.version

    @property
    def has_ports(self):
        return self.dst_port is not None and self.proto in (PROTO_TCP, PROTO_UDP)

    def is_icmp(self):
        if self.version == 4:
            return self.proto == PROTO_ICMP
        return self.proto == PROTO_ICMPV6 and not self.is_neighbour_discovery()

    def is_neighbour_discovery(self):
        return (self.version == 6 and self.proto == PROTO_ICMPV6 and self.icmp_type is not None
                and NDP_FIRST <= self.icmp_type <= NDP_LAST)

    def describe(self):
        if self.proto in (PROTO_TCP, PROTO_UDP) and self.dst_port is not None:
            return "%s port %d" % ("TCP" if self.proto == PROTO_TCP else "UDP", self.dst_port)
        return "IP protocol %d" % self.proto


def matches(rule, packet):
    """Does a port rule or rate limit match the packet (match_condition() of the template)?"""
    proto = rule["proto"]
    if proto == "icmp":
        proto_ok = packet.is_icmp()
    elif proto in _PROTO_NUMBERS:
        proto_ok = packet.proto == _PROTO_NUMBERS[proto]
    else:   # any: with a port range only TCP and UDP have ports
        proto_ok = packet.proto in (PROTO_TCP, PROTO_UDP) if rule["port_low"] else True
    if not proto_ok:
        return False
    if not rule["port_low"]:
        return True
    return packet.has_ports and rule["port_low"] <= packet.dst_port <= rule["port_high"]


def _network(version, entry):
    network, length = entry
    address = ipaddress.IPv4Address(network) if version == 4 else ipaddress.IPv6Address(network)
    return ipaddress.ip_network("%s/%d" % (address, length))


class Verdict(collections.namedtuple("Verdict", "action rule log_rule kind entry port_rule rate_limits")):
    """What the filter does with a packet.

    action: "pass", "drop" or "rate_limited" (_contract.ACTIONS); rule: the id that decided (the
    one the kernel counts); log_rule: the first `log` port rule that matched, or RULE_NONE;
    kind: what decided ("neighbour", "allow", "deny", "port", "default", "rate_limit");
    entry: the list entry (ipaddress network, the widest one containing the source) for
    "allow" and "deny"; port_rule: the rule (or rate limit) for "port" and "rate_limit";
    rate_limits: the limits whose buckets the packet takes a token from.
    """

    @property
    def dropped(self):
        return self.action != "pass"


def classify(packet, filter_section, lists):
    """The filter's decision before the rate limits (classify() in the template)."""
    if packet.is_neighbour_discovery():
        return Verdict("pass", _contract.RULE_DEFAULT, _contract.RULE_NONE, "neighbour", None, None, ())
    family = packet.version
    number = int(packet.source)
    for list_name, action in (("allow", "pass"), ("deny", "drop")):
        found = lists[_contract.list_map(list_name, family)].matches(number)
        if found:
            return Verdict(action, _contract.RULE_IDS[list_name], _contract.RULE_NONE, list_name,
                           _network(family, found[0]), None, ())
    log_rule = _contract.RULE_NONE
    for rule in filter_section.get("ports") or []:
        if rule["direction"] != "ingress" or not matches(rule, packet):
            continue
        if rule["action"] == "log":
            if log_rule == _contract.RULE_NONE:
                log_rule = rule["id"]
            continue
        return Verdict(rule["action"], rule["id"], log_rule, "port", None, rule, ())
    action = "drop" if filter_section.get("default") == "deny" else "pass"
    return Verdict(action, _contract.RULE_DEFAULT, log_rule, "default", None, None, ())


def xdp_verdict(packet, filter_section, lists, empty_buckets=()):
    """The XDP program's decision: classify(), then, for a packet that passes other than by an
    allow entry, the rate limits that match it (`rate_limits` of the verdict). A limit whose id
    is in `empty_buckets` has no token left for this source: the first such drops the packet."""
    verdict = classify(packet, filter_section, lists)
    if verdict.action != "pass" or verdict.kind == "allow":
        return verdict
    counting = []
    for limit in filter_section.get("rate_limit") or []:
        if matches(limit, packet):
            counting.append(limit)
            if limit["id"] in empty_buckets:
                return verdict._replace(action="rate_limited", rule=limit["id"], kind="rate_limit", port_rule=limit,
                                        rate_limits=tuple(counting))
    return verdict._replace(rate_limits=tuple(counting))


def explain(verdict, packet):
    """The reason the policy module's lockout guard gives for a verdict on the controller's packets."""
    if verdict.kind == "allow":
        return "allowed by filter.allow %s" % verdict.entry
    if verdict.kind == "deny":
        return "it matches filter.deny %s" % verdict.entry
    if verdict.kind == "port":
        return "port rule %s %s %s" % (verdict.port_rule["name"], "drops" if verdict.dropped else "passes",
                                       packet.describe())
    if verdict.kind == "neighbour":
        return "neighbour discovery always passes"
    if verdict.dropped:
        return "filter.default is deny and no filter.allow entry matches it"
    return "no list matches it and filter.default is allow"


def describe_limit(limit):
    return "%s (%d packets/s, burst %d)" % (limit["name"], limit["rate"], limit["burst"])
