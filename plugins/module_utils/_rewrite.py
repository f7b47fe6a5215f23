# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Header rewrite rules (policy `rewrite`, docs/rewrite.md): their vocabulary and the pure
checks the validator in _policy.py applies to them.

A rule matches packets by what the filter already understands (source and destination CIDR,
protocol, ports) and changes headers at tc: strips or pushes an 802.1Q tag, or sets the DSCP
(IPv4 TOS with its checksum, IPv6 traffic class). Matches are compiled into the program, like
port rules; each rule counts the packets it rewrote in `rule_stats` under its own rule id.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

REWRITE_FIRST_ID = 192
MAX_REWRITE_RULES = 16
REWRITE_DIRECTIONS = ("ingress", "egress")
REWRITE_PROTOS = ("tcp", "udp", "icmp", "any")
VLAN_ID_MIN, VLAN_ID_MAX = 1, 4094
PCP_MAX = 7
DSCP_MAX = 63

# RFC 2474 class selectors, RFC 2597 assured forwarding, RFC 3246 expedited forwarding,
# RFC 5865 voice-admit, RFC 8622 lower effort.
DSCP_NAMES = {"default": 0, "be": 0, "ef": 46, "va": 44, "le": 1}
DSCP_NAMES.update(("cs%d" % n, n << 3) for n in range(8))
DSCP_NAMES.update(("af%d%d" % (cls, drop), (cls << 3) | (drop << 1)) for cls in range(1, 5) for drop in range(1, 4))


def parse_dscp(value):
    """(code point, None) from a name such as `ef`/`af41`/`cs6` or a number 0-63; (None, why)."""
    if isinstance(value, bool):
        return None, "must be a DSCP name (ef, af11-af43, cs0-cs7, be, le, va) or a number 0-63, got %r" % (value,)
    if isinstance(value, int):
        if 0 <= value <= DSCP_MAX:
            return value, None
        return None, "DSCP code points are 0-63, got %d" % value
    if isinstance(value, str) and value.strip().lower() in DSCP_NAMES:
        return DSCP_NAMES[value.strip().lower()], None
    if isinstance(value, str) and value.strip().isdigit():
        return parse_dscp(int(value.strip()))
    return None, "%r is not a DSCP name (ef, af11-af43, cs0-cs7, be, le, va) or a number 0-63" % (value,)


def network(text):
    """An ip_network or None."""
    try:
        return ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError:
        return None


def _networks_overlap(first, second):
    if first is None or second is None:
        return True
    if first.version != second.version:
        return False
    return first.overlaps(second)


def _ranges_overlap(first, second):
    if first is None or second is None:
        return True
    return first[0] <= second[1] and second[0] <= first[1]


def _protos_overlap(first, second):
    return first == "any" or second == "any" or first == second


def overlaps(first, second):
    """Can one packet match both rules' matches (same direction)?"""
    if first["direction"] != second["direction"]:
        return False
    a, b = first["match"], second["match"]
    return (_protos_overlap(a["proto"], b["proto"])
            and _networks_overlap(network(a["src"]) if a["src"] else None, network(b["src"]) if b["src"] else None)
            and _networks_overlap(network(a["dst"]) if a["dst"] else None, network(b["dst"]) if b["dst"] else None)
            and _ranges_overlap(a["src_port"], b["src_port"]) and _ranges_overlap(a["dst_port"], b["dst_port"]))


def conflicts(first, second):
    """What two overlapping rules would both change (a packet gets one VLAN and one DSCP
    decision, so two rules that may both set one of them on the same packet are an error)."""
    both = []
    if first["vlan"] and second["vlan"]:
        both.append("vlan")
    if first["dscp"] is not None and second["dscp"] is not None:
        both.append("dscp")
    return both if both and overlaps(first, second) else []


SCHEMA_PORT = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                         {"type": "string", "pattern": r"^\s*[0-9]{1,5}\s*(-\s*[0-9]{1,5}\s*)?$"}]}

SCHEMA = {
    "type": "array", "default": [], "maxItems": MAX_REWRITE_RULES,
    "description": "Header rewrites at tc, in order (docs/rewrite.md). A rule changes the packets its `match` "
                   "selects: `vlan: strip` removes the outer 802.1Q tag, `vlan: {push: ID, pcp: P}` adds one "
                   "(egress only), `dscp` sets the DSCP code point (IPv4 with the header checksum fixed, IPv6 "
                   "traffic class). Two rules of one direction whose matches overlap may not both set the VLAN or "
                   "both set the DSCP. Each rule counts the packets it rewrote. At most %d rules."
                   % MAX_REWRITE_RULES,
    "items": {
        "type": "object", "additionalProperties": False, "required": ["direction"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9_.-]{0,30}[a-z0-9])?$",
                     "description": "Names the rule in counters and records (1-32 characters of a-z, 0-9, `.`, "
                                    "`-`, `_`). Default: `rewrite[N]`."},
            "direction": {"enum": list(REWRITE_DIRECTIONS),
                          "description": "`ingress` rewrites packets as they arrive (tc ingress, before the "
                                         "stack), `egress` as they leave (tc egress)."},
            "match": {
                "type": "object", "additionalProperties": False, "default": {},
                "description": "Which packets. Empty: every IP packet. All given fields must match.",
                "properties": {
                    "src": {"type": "string", "description": "Source network (CIDR), IPv4 or IPv6."},
                    "dst": {"type": "string", "description": "Destination network (CIDR), IPv4 or IPv6."},
                    "proto": {"enum": list(REWRITE_PROTOS), "default": "any",
                              "description": "`tcp`, `udp`, `icmp` (ICMP and ICMPv6) or `any`."},
                    "src_port": dict(SCHEMA_PORT, description="Source port or range (tcp, udp)."),
                    "dst_port": dict(SCHEMA_PORT, description="Destination port or range (tcp, udp)."),
                },
            },
            "vlan": {"oneOf": [
                {"const": "strip"},
                {"type": "object", "additionalProperties": False, "required": ["push"],
                 "properties": {"push": {"type": "integer", "minimum": VLAN_ID_MIN, "maximum": VLAN_ID_MAX},
                                "pcp": {"type": "integer", "minimum": 0, "maximum": PCP_MAX, "default": 0}}}],
                "description": "`strip`: remove the outer 802.1Q tag (a packet without one is left alone). "
                               "`{push: ID, pcp: P}`: add a tag with VLAN id 1-4094 and priority 0-7, egress only "
                               "(a tag pushed on ingress would reach a stack that already chose the interface)."},
            "dscp": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": DSCP_MAX}, {"type": "string"}],
                     "description": "DSCP to set: a name (`ef`, `af11`-`af43`, `cs0`-`cs7`, `be`, `le`, `va`) "
                                    "or a number 0-63. The ECN bits are kept."},
            "comment": {"type": "string", "description": "Why this rule exists."},
        },
    },
}
