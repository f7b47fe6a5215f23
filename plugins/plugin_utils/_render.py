# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render a validated policy into the C program and the map manifest (controller side).

The output is everything the host needs and nothing it has to compute: the C text, the
maps it expects (shape and desired content) and the digests that make a re-run a no-op.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os

import jinja2

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _http, _packing, _policy

GENERATOR_VERSION = "0.1.0"
BPF_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "bpf"))
NANOS_PER_SECOND = 1000000000


def program_manifest(model):
    """Programs to load and where they attach; loggers exist only for logged directions."""
    # Function names become kernel program names (15 characters at most); the `bpfleet_`
    # prefix is how a host tells its own attachments from foreign ones.
    programs = [{"function": "bpfleet_xdp", "hook": "xdp", "pin": "prog_xdp"}]
    log = model["log"]
    logged = log["directions"] if log["enabled"] else []
    # Egress port rules need the egress program even when nothing is logged; rewrite rules
    # need the program of their direction.
    filters_egress = any(rule["direction"] == "egress" for rule in model["filter"]["ports"])
    rewrites = set(rule["direction"] for rule in model.get("rewrite") or [])
    for direction in ("ingress", "egress"):
        if direction in logged or (direction == "egress" and filters_egress) or direction in rewrites:
            programs.append({"function": "bpfleet_" + direction, "hook": "tc-" + direction,
                             "pin": "prog_tc_" + direction})
    return programs


def kernel_http(model):
    """What the kernel's HTTP scanner compiles in (bpf/include/bpfleet_http.h), or None when
    the policy captures no HTTP: the ports, the scanner's automaton (_http.SCANNER_TRANSITIONS)
    and the redaction rules as the constants it compares with (the rules the agent applies)."""
    log = model["log"]
    http = log.get("http")
    if not log["enabled"] or not http:
        return None
    rules = _http.RedactionRules(http["redact"], http["redact_containing"])
    bits, multiplier, slots = _http.kernel_name_table(rules.names)
    names = dict((_http.kernel_name_hash(name), name.decode("latin-1")) for name in rules.names)
    tails = []
    for part in rules.containing:
        mask, value = _http.kernel_tail_pattern(part)
        tails.append({"text": part.decode("latin-1"), "mask": "0x%x" % mask, "value": "0x%x" % value})
    transitions = []
    order = [(state, cls) for state in _http.SCAN_STATES for cls in _http.SCAN_CLASSES]
    for state, cls in order:
        target, actions = _http.SCANNER_TRANSITIONS[(state, cls)]
        if target != state or actions:
            transitions.append({"state": state, "class": cls, "next": target,
                                "actions": [name for name, bit in _http.SCAN_ACTIONS if actions & bit]})
    return {
        "ports": http["ports"],
        "requests_only": http["requests_only"],
        "max_bytes": http["max_bytes"],
        "states": _http.SCAN_STATES,
        "classes": _http.SCAN_CLASSES,
        "class_bytes": sorted((_http.CLASS_OF_BYTE[byte], byte) for byte in _http.CLASS_OF_BYTE),
        "width": _http.SCAN_WIDTH,
        "actions": _http.SCAN_ACTIONS,
        "transitions": transitions,
        "name_slot_bits": bits,
        "name_multiplier": "0x%016x" % multiplier,
        "name_slots": [{"index": index, "hash": "0x%016x" % value, "text": names[value]}
                       for index, value in enumerate(slots) if value],
        "tails": tails,
    }


def _address_test(field, cidr):
    """C test that pkt-><field> (16 bytes, IPv4 in the first 4) lies in `cidr`: whole bytes
    compared, the last partial byte masked, so the compiler sees constants only."""
    net = ipaddress.ip_network(cidr)
    raw = net.network_address.packed
    tests = ["pkt->ip_ver == %d" % net.version]
    full, rest = divmod(net.prefixlen, 8)
    for index in range(full):
        tests.append("pkt->%s[%d] == 0x%02x" % (field, index, raw[index]))
    if rest:
        mask = (0xff << (8 - rest)) & 0xff
        tests.append("(pkt->%s[%d] & 0x%02x) == 0x%02x" % (field, full, mask, raw[full] & mask))
    return " && ".join(tests)


def _port_test(field, ports):
    low, high = ports
    if low == high:
        return "pkt->has_ports && pkt->%s == %d" % (field, low)
    return "pkt->has_ports && pkt->%s >= %d && pkt->%s <= %d" % (field, low, field, high)


_PROTO_TESTS = {"tcp": "pkt->proto == IPPROTO_TCP", "udp": "pkt->proto == IPPROTO_UDP", "icmp": "is_icmp(pkt)",
                "any": "pkt->ip_ver != 0"}


def kernel_rewrites(model):
    """Rewrite rules with their match as one C condition (bpf/bpfleet.c.j2 compiles them in)."""
    rules = []
    for rule in model.get("rewrite") or []:
        match = rule["match"]
        tests = [_PROTO_TESTS[match["proto"]]]
        for key, field in (("src", "src_ip"), ("dst", "dst_ip")):
            if match[key]:
                tests.append(_address_test(field, match[key]))
        if match["proto"] == "any" and len(tests) > 1:
            tests.pop(0)  # an address test already requires an IP packet
        for key in ("src_port", "dst_port"):
            if match[key]:
                tests.append(_port_test(key, match[key]))
        vlan = rule["vlan"] or {}
        rules.append({"id": rule["id"], "name": rule["name"], "direction": rule["direction"],
                      "condition": " && ".join(tests), "dscp": rule["dscp"],
                      "vlan_strip": bool(vlan.get("strip")),
                      "vlan_push_tci": ((vlan["pcp"] << 13) | vlan["push"]) if vlan.get("push") else None})
    return rules


def log_settings(model):
    """The log part of state.json: what the agent needs to decode and write the records."""
    log = model["log"]
    fields = list(log["fields"])
    if log["enabled"] and log.get("http"):
        fields.append("http")
    return {
        "enabled": log["enabled"],
        "fields": fields,
        "directions": log["directions"],
        "sample": log["sample"],
        "match": log["match"],
        "http": log["http"],
        "file": log["file"],
        "max_size": log["max_size"],
        "keep": log["keep"],
    }


def _fill_nanoseconds(limit):
    """Time an empty bucket takes to fill: beyond it, the bucket is simply full. Computed here
    so the kernel never multiplies a long idle time by the rate (a u64 overflow)."""
    return -(-limit["burst"] * NANOS_PER_SECOND // limit["rate"])


@functools.lru_cache(maxsize=1)
def _environment():
    """One environment per process: Jinja2 then compiles the template once, not per host."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(BPF_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env


def render(model):
    """Return the rendered program and its manifest for a validated policy model."""
    env = _environment()
    template = env.get_template("bpfleet.c.j2")
    source = template.render(
        policy=model,
        generator_version=GENERATOR_VERSION,
        pin_dir="%s/%s" % (_contract.PIN_ROOT, model["name"]),
        ringbuf_bytes=_contract.RINGBUF_BYTES,
        maps=_contract.map_specs(),
        contract_defines=_contract.c_defines(),
        list_maps=_contract.LIST_FAMILIES,
        http=kernel_http(model),
        rewrites=kernel_rewrites(model),
        rule_names=dict((rule["id"], rule["name"]) for rule in _policy.rule_details(model)),
        rate_fill_ns=dict((limit["id"], _fill_nanoseconds(limit)) for limit in model["filter"]["rate_limit"]),
    )
    lists = dict((name, _packing.pack(values, version, rule))
                 for name, (version, values, rule) in _policy.list_values(model).items())
    return {
        "name": model["name"],
        "source": source,
        "source_digest": "sha256:" + hashlib.sha256(source.encode("utf-8")).hexdigest(),
        # The list maps' desired content, packed (_packing); the digest covers the entries and
        # their rule ids, not the compressed form.
        "lists": lists,
        "maps_digest": _policy.digest_of(dict((name, [packed["digest"], packed["rule"]])
                                              for name, packed in lists.items())),
        "maps": _contract.map_specs(),
        "programs": program_manifest(model),
        "rules": _policy.rule_names(model),
        "rule_details": _policy.rule_details(model),
        "interfaces": model["interfaces"],
        "xdp_mode": model["xdp_mode"],
        "filter_default": model["filter"]["default"],
        "filter": {"default": model["filter"]["default"], "ports": model["filter"]["ports"],
                   "rate_limit": model["filter"]["rate_limit"]},
        "rewrite": model.get("rewrite") or [],
        "log": log_settings(model),
    }
