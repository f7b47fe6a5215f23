# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests of policy validation and rendering (hypothesis; pure Python, no kernel).

Valid policies are generated field by field from the policy schema (docs/policy.md,
docs/policy-reference.md; enumerations from the _policy constants). Invalid policies are
valid ones with one to three mutations of known kinds: wrong types, unknown keys, bad CIDRs,
bad list files, bad names, out-of-range values, junk at any path. A new schema field fails
test_strategies_know_every_schema_field until the strategies below generate it.

List files ({file: name} entries) live in LIST_FILES, keyed by a digest of their text, and
are read through validate()'s read_file argument.

BPFLEET_PROPERTY_EXAMPLES=N runs every property with N examples (a deeper local run).
"""

import copy
import errno
import hashlib
import ipaddress
import json
import os
import re
import string

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.bpfleet.core.plugins.module_utils import _http, _maps, _packing, _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render


def _settings(examples):
    return settings(
        max_examples=int(os.environ.get("BPFLEET_PROPERTY_EXAMPLES") or examples),
        deadline=None,
        database=None,      # no example database in the working tree
        print_blob=True,    # a failure prints the @reproduce_failure line
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# --- the schema, as the docs describe it ----------------------------------------------------------

NAME_SPEC = re.compile(r"[a-z0-9]([a-z0-9_-]{0,46}[a-z0-9])?")         # name
IFACE_CHARS = string.ascii_letters + string.digits + "._@-"
IFACE_FORBIDDEN = "/: \t\n\u2003"                                         # no '/', ':' or whitespace
SAMPLE_SPEC = re.compile(r"\s*1\s*/\s*([0-9]{1,7})\s*")                   # log.sample: "1/N"
SAMPLE_MAX = 1000000
SIZE_FACTORS = {"": 1, "k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20, "g": 1 << 30, "G": 1 << 30}
SIZE_MIN = 4096
KEEP_MAX = _policy.MAX_SINK_KEEP
SAFE_KEY_CHARS = string.ascii_letters + string.digits + "_-"
TOP_KEYS = ("name", "interfaces", "xdp_mode", "filter", "rewrite", "log")

# Fields the strategies generate (paths as in problem messages, list items as []).
GENERATED_FIELDS = {
    "name", "interfaces", "interfaces[]", "xdp_mode", "filter", "filter.default", "filter.deny", "filter.deny[]",
    "filter.deny[].cidr", "filter.deny[].comment", "filter.deny[].file", "filter.allow", "filter.allow[]",
    "filter.allow[].cidr", "filter.allow[].comment", "filter.allow[].file", "log", "log.enabled", "log.fields",
    "log.fields[]", "log.directions", "log.directions[]", "log.sample", "log.sink", "log.sink.file",
    "log.sink.max_size", "log.sink.keep",
    "filter.ports", "filter.ports[]", "filter.ports[].name", "filter.ports[].proto", "filter.ports[].port",
    "filter.ports[].direction", "filter.ports[].action", "filter.ports[].comment",
    "filter.rate_limit", "filter.rate_limit[]", "filter.rate_limit[].name", "filter.rate_limit[].match",
    "filter.rate_limit[].match.proto", "filter.rate_limit[].match.port", "filter.rate_limit[].per_source",
    "filter.rate_limit[].burst", "filter.rate_limit[].comment",
    "log.match", "log.match[]", "log.match[].proto", "log.match[].port", "log.match[].src_port",
    "log.match[].dst_port",
    "log.http", "log.http.ports", "log.http.ports[]", "log.http.headers", "log.http.headers[]", "log.http.redact",
    "log.http.redact[]", "log.http.redact_containing", "log.http.redact_containing[]", "log.http.max_bytes",
    "log.http.requests_only",
    "rewrite", "rewrite[]", "rewrite[].name", "rewrite[].direction", "rewrite[].match", "rewrite[].match.src",
    "rewrite[].match.dst", "rewrite[].match.proto", "rewrite[].match.src_port", "rewrite[].match.dst_port",
    "rewrite[].vlan", "rewrite[].vlan.push", "rewrite[].vlan.pcp", "rewrite[].dscp", "rewrite[].comment",
}
# RFC 9110 tchar: what a header name may be made of.
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits

names = st.from_regex(NAME_SPEC, fullmatch=True)
# "." and ".." are left out: Linux refuses them although the schema does not say so.
interface_names = st.text(IFACE_CHARS, min_size=1, max_size=15).filter(
    lambda n: n not in ("lo", ".", "..", _policy.ALL_INTERFACES))
absolute_paths = st.lists(st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12),
                          min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
# A log file lies beneath /var/log/bpfleet (the default allowed directory), no '.' or '..'.
sink_paths = absolute_paths.filter(lambda p: not any(part in (".", "..") for part in p.split("/"))).map(
    lambda p: "/var/log/bpfleet" + p)
comments = st.one_of(st.none(), st.text(max_size=30))

LIST_FILES = {}


def list_file(text):
    """Register a list file's text; returns its name (the same text gives the same name)."""
    name = "lists/%s.txt" % hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    LIST_FILES[name] = text
    return name


def read_list_file(name):
    try:
        return LIST_FILES[name]
    except (KeyError, TypeError):
        raise OSError(errno.ENOENT, "No such file or directory", name) from None


@st.composite
def networks(draw, version=None):
    """An IPv4 or IPv6 network with its host bits clear."""
    version = version or draw(st.sampled_from((4, 6)))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(0, bits))
    address = draw(st.integers(0, 2 ** bits - 1)) >> (bits - prefix) << (bits - prefix)
    return ipaddress.ip_network((address, prefix))


@st.composite
def cidr_entries(draw, network):
    """An inline entry for `network`: a CIDR string or {cidr, comment}, compressed or exploded."""
    text = draw(st.sampled_from((network.compressed, network.exploded)))
    form = draw(st.sampled_from(("text", "text", "dict", "dict+comment")))
    if form == "text":
        return text
    if form == "dict":
        return {"cidr": text}
    return {"cidr": text, "comment": draw(comments)}


@st.composite
def list_file_entries(draw, nets, extra_lines=()):
    """{file: name} for a list file holding `nets` (one per line, '#' comments, blank lines)."""
    lines = []
    for network in nets:
        text = draw(st.sampled_from((network.compressed, network.exploded)))
        lines.append(draw(st.sampled_from(("", " ", "\t"))) + text + draw(st.sampled_from(
            ("", "  ", " # scanner", "\t#x # y"))))
    lines.extend(extra_lines)
    for _count in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(("", "# a comment", "   ", "#"))))
    ending = draw(st.sampled_from(("\n", "\r\n")))
    return {"file": list_file(ending.join(lines) + draw(st.sampled_from(("", ending))))}


@st.composite
def list_layouts(draw, nets):
    """Entries of a deny/allow list holding exactly `nets`: inline entries and list files."""
    files = [[] for count in range(draw(st.integers(0, 2)))]
    entries = []
    for network in nets:
        slot = draw(st.integers(0, len(files)))
        if slot == len(files):
            entries.append(draw(cidr_entries(network)))
        else:
            files[slot].append(network)
    for group in files:
        entries.insert(draw(st.integers(0, len(entries))), draw(list_file_entries(group)))
    return entries


port_values = st.one_of(
    st.integers(1, 65535), st.integers(1, 65535).map(str),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda t: "%d-%d" % (min(t), max(t))),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda t: " %d - %d " % (min(t), max(t))))
rule_names = st.from_regex(_policy.RULE_NAME_PATTERN, fullmatch=True).filter(lambda n: n not in _policy.RULE_IDS)
rates = st.one_of(st.integers(1, _policy.MAX_RATE_PPS), st.integers(1, _policy.MAX_RATE_PPS).map("{}/s".format),
                  st.integers(1, _policy.MAX_RATE_PPS).map("{} / s".format))


@st.composite
def matches(draw, with_proto_required=False):
    match = {}
    proto = draw(st.sampled_from(_policy.PORT_PROTOS))
    if with_proto_required or draw(st.booleans()):
        match["proto"] = proto
    if proto != "icmp" and draw(st.booleans()):
        match["port"] = draw(port_values)
    return match


@st.composite
def port_rules(draw, actions):
    rule = draw(matches(with_proto_required=True))
    rule["action"] = draw(st.sampled_from(actions))
    if draw(st.booleans()):
        rule["direction"] = draw(st.sampled_from(_policy.PORT_DIRECTIONS))
    if draw(st.booleans()):
        rule["comment"] = draw(st.text(max_size=20))
    return rule


@st.composite
def rate_limits(draw):
    limit = {"per_source": draw(rates)}
    if draw(st.booleans()):
        limit["match"] = draw(matches())
    if draw(st.booleans()):
        limit["burst"] = draw(st.integers(1, _policy.MAX_BURST))
    if draw(st.booleans()):
        limit["comment"] = draw(st.text(max_size=20))
    return limit


@st.composite
def filters(draw, log_enabled=False):
    nets = draw(st.lists(networks(), max_size=12, unique=True))
    cut = draw(st.integers(0, len(nets)))
    flt = {}
    if draw(st.booleans()):
        flt["default"] = draw(st.sampled_from(_policy.FILTER_DEFAULTS))
    for key, part in (("deny", nets[:cut]), ("allow", nets[cut:])):
        if part:
            flt[key] = draw(list_layouts(part))
        else:
            empty = draw(st.sampled_from(("absent", "null", "list")))
            if empty != "absent":
                flt[key] = None if empty == "null" else []
    # `log` port rules need header records, so only a policy that logs gets them.
    actions = _policy.PORT_ACTIONS if log_enabled else tuple(a for a in _policy.PORT_ACTIONS if a != "log")
    rules = draw(st.lists(port_rules(actions), max_size=4)) if draw(st.booleans()) else []
    limits = draw(st.lists(rate_limits(), max_size=3)) if draw(st.booleans()) else []
    named = draw(st.lists(rule_names, max_size=len(rules) + len(limits), unique=True))
    for entry, name in zip(draw(st.permutations(rules + limits)), named, strict=False):
        entry["name"] = name
    if rules or draw(st.booleans()):
        flt["ports"] = rules
    if limits or draw(st.booleans()):
        flt["rate_limit"] = limits
    return flt


@st.composite
def sizes(draw):
    """log.sink.max_size: bytes (at least 4 KiB) as an integer or as '100M', '512 kB', '1.5G'."""
    if draw(st.booleans()):
        return draw(st.integers(SIZE_MIN, 2 ** 45))
    suffix = draw(st.sampled_from(sorted(SIZE_FACTORS)))
    number = draw(st.integers(-(-SIZE_MIN // SIZE_FACTORS[suffix]), 10 ** 6))
    fraction = draw(st.sampled_from(("", ".0", ".5", ".25"))) if suffix else ""
    return "%d%s%s%s%s" % (number, fraction, draw(st.sampled_from(("", " "))), suffix,
                           draw(st.sampled_from(("", "B", "b"))) if suffix else "")


@st.composite
def logs(draw):
    log = {}
    if draw(st.booleans()):
        log["enabled"] = draw(st.booleans())
    if draw(st.booleans()):
        log["fields"] = draw(st.lists(st.sampled_from(_policy.LOG_FIELDS), unique=True))
    if draw(st.booleans()):
        log["directions"] = draw(st.lists(st.sampled_from(_policy.LOG_DIRECTIONS), min_size=1, unique=True))
    if draw(st.booleans()):
        number = draw(st.integers(1, SAMPLE_MAX))
        log["sample"] = draw(st.sampled_from(("1/%d" % number, number)))
    if draw(st.booleans()):
        sink = {}
        if draw(st.booleans()):
            sink["file"] = draw(sink_paths)
        if draw(st.booleans()):
            sink["max_size"] = draw(sizes())
        if draw(st.booleans()):
            sink["keep"] = draw(st.integers(1, KEEP_MAX))
        log["sink"] = sink
    if draw(st.booleans()):
        log["match"] = draw(st.lists(log_match_rules(), max_size=4))
    if draw(st.booleans()):
        log["http"] = draw(st.one_of(st.none(), http_settings()))
    return log


header_names = st.text(TOKEN_CHARS, min_size=1, max_size=20)
name_parts = st.text(TOKEN_CHARS, min_size=_http.MIN_SUBSTRING_LENGTH, max_size=_http.MAX_SUBSTRING_LENGTH)


@st.composite
def log_match_rules(draw):
    """A log.match entry: proto (name or number) and/or ports; ports only with tcp, udp or no proto."""
    rule = {}
    proto = draw(st.one_of(st.none(), st.sampled_from(_policy.LOG_MATCH_PROTOS), st.integers(0, 255)))
    if proto is not None:
        rule["proto"] = proto
    if proto in (None, "tcp", "udp", 6, 17):
        for key in _policy.MATCH_PORT_KEYS:
            if draw(st.booleans()):
                rule[key] = draw(port_values)
    if not rule:
        rule["proto"] = draw(st.sampled_from(_policy.LOG_MATCH_PROTOS))
    return rule


@st.composite
def http_settings(draw):
    http = {}
    if draw(st.booleans()):
        http["ports"] = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=_http.MAX_PORTS, unique=True))
    for key in ("headers", "redact"):
        if draw(st.booleans()):
            http[key] = draw(st.lists(header_names, max_size=6, unique_by=str.lower))
    if draw(st.booleans()):
        http["redact_containing"] = draw(st.lists(name_parts, max_size=4, unique_by=str.lower))
    if draw(st.booleans()):
        http["max_bytes"] = draw(st.integers(_http.MIN_MAX_BYTES, _http.MAX_MAX_BYTES))
    if draw(st.booleans()):
        http["requests_only"] = draw(st.booleans())
    return http


@st.composite
def rewrites(draw):
    """Rewrite rules that never conflict: each matches its own destination 10.N.0.0/16 (or
    2001:db8:N::/48), so no two overlap. Names start with "rw." so they never meet the filter's."""
    count = draw(st.integers(0, 3))
    blocks = draw(st.lists(st.integers(0, 255), min_size=count, max_size=count, unique=True))
    rules = []
    for index, block in enumerate(blocks):
        direction = draw(st.sampled_from(_policy._rewrite.REWRITE_DIRECTIONS))
        six = draw(st.booleans())
        match = {"dst": "2001:db8:%x::/48" % block if six else "10.%d.0.0/16" % block}
        if draw(st.booleans()):
            match["proto"] = draw(st.sampled_from(("tcp", "udp", "any")))
            if draw(st.booleans()):
                match["dst_port"] = draw(st.integers(1, 65535))
            if draw(st.booleans()):
                match["src_port"] = "%d-%d" % (1024, draw(st.integers(1024, 65535)))
        if draw(st.booleans()):
            match["src"] = "2001:db8:ffff::/64" if six else "192.0.2.0/24"
        rule = {"direction": direction, "match": match}
        change = draw(st.sampled_from(("dscp", "vlan", "both")))
        if change in ("dscp", "both"):
            rule["dscp"] = draw(st.one_of(st.integers(0, 63), st.sampled_from(sorted(_policy._rewrite.DSCP_NAMES))))
        if change in ("vlan", "both"):
            if direction == "egress" and draw(st.booleans()):
                rule["vlan"] = {"push": draw(st.integers(1, 4094))}
                if draw(st.booleans()):
                    rule["vlan"]["pcp"] = draw(st.integers(0, 7))
            else:
                rule["vlan"] = "strip"
        if draw(st.booleans()):
            rule["name"] = "rw.%d" % index
        if draw(st.booleans()):
            rule["comment"] = draw(st.text(max_size=20))
        rules.append(rule)
    return rules


@st.composite
def valid_policies(draw):
    raw = {"name": draw(names)}
    if draw(st.integers(0, 9)) == 0:
        raw["interfaces"] = _policy.ALL_INTERFACES
    else:
        raw["interfaces"] = draw(st.lists(interface_names, min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        raw["xdp_mode"] = draw(st.sampled_from(_policy.XDP_MODES))
    choices = dict((key, draw(st.sampled_from(("absent", "null", "mapping", "mapping")))) for key in ("log", "filter"))
    if choices["log"] != "absent":
        raw["log"] = None if choices["log"] == "null" else draw(logs())
    log_enabled = isinstance(raw.get("log"), dict) and raw["log"].get("enabled", True)
    if choices["filter"] != "absent":
        raw["filter"] = None if choices["filter"] == "null" else draw(filters(log_enabled))
    if draw(st.booleans()):
        raw["rewrite"] = draw(rewrites())
    return raw


def list_networks(entries):
    """The networks of a raw deny/allow list, in order, read independently of _policy."""
    found = []
    for entry in entries or []:
        if isinstance(entry, dict) and "file" in entry:
            texts = [line.split("#", 1)[0].strip() for line in LIST_FILES[entry["file"]].splitlines()]
        else:
            texts = [entry["cidr"] if isinstance(entry, dict) else entry]
        found.extend(ipaddress.ip_network(text.strip()) for text in texts if text.strip())
    return found


def prefix_sets(raw):
    """(deny, allow) sets of networks of a raw policy."""
    flt = raw.get("filter") or {}
    return tuple(frozenset(list_networks(flt.get(key))) for key in ("deny", "allow"))


# --- paths inside a raw policy --------------------------------------------------------------------

def fmt(path):
    """('filter', 'deny', 3) -> 'filter.deny[3]', the notation of the problem messages."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text = "%s[%d]" % (text, key)
        elif key.startswith(" ("):        # " (lists/x.txt": a line of that list file
            text += key
        else:
            text = "%s.%s" % (text, key) if text else str(key)
    return text


def node_paths(value, prefix=()):
    paths = []
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return paths
    for key, child in children:
        paths.append(prefix + (key,))
        paths.extend(node_paths(child, prefix + (key,)))
    return paths


def get_at(raw, path):
    for key in path:
        raw = raw[key]
    return raw


def get_at_or_none(raw, path):
    try:
        return get_at(raw, path)
    except (KeyError, IndexError, TypeError):
        return None


def set_at(raw, path, value):
    """Set raw[path] = value (returned), making missing, null or non-mapping parents mappings."""
    if not path:
        return value
    node = raw
    for depth, key in enumerate(path[:-1]):
        child = node[key] if isinstance(node, list) else node.get(key)
        if not isinstance(path[depth + 1], int) and not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return raw


def insert_into(raw, list_path, draw, value):
    """Insert value at a random index of the list at list_path (made when missing or not a list);
    returns the path of the new entry."""
    if not isinstance(get_at_or_none(raw, list_path), list):
        set_at(raw, list_path, [])
    entries = get_at(raw, list_path)
    index = draw(st.integers(0, len(entries)))
    entries.insert(index, value)
    return list_path + (index,)


# --- invalid values -------------------------------------------------------------------------------

def parses_as_network(text):
    try:
        ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        return False
    return True


def sample_ok(value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    match = SAMPLE_SPEC.fullmatch(value if isinstance(value, str) else "1/%d" % value)
    return bool(match) and 1 <= int(match.group(1)) <= SAMPLE_MAX


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
safe_keys = st.text(SAFE_KEY_CHARS, min_size=1, max_size=10)
json_like = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(safe_keys, children, max_size=4)), max_leaves=10)
# Arbitrary junk for the robustness test: any keys, any text.
any_json = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)), max_leaves=10)

# Junk that is wrong at every path of the schema: no field takes a float, every list
# rejects a float member, and every mapping rejects an unknown key.
poison = st.deferred(lambda: st.one_of(
    st.floats(),
    st.tuples(st.lists(json_like, max_size=3), poison, st.integers(0, 3)).map(
        lambda t: t[0][:t[2]] + [t[1]] + t[0][t[2]:]),
    st.tuples(st.dictionaries(safe_keys, json_like, max_size=3), poison).map(
        lambda t: dict(t[0], zz_junk=t[1])),
))

bad_names = st.one_of(
    st.text(max_size=60).filter(lambda s: not NAME_SPEC.fullmatch(s)),
    names.map(str.upper).filter(lambda s: s != s.lower()),
    names.map(lambda s: "-" + s), names.map(lambda s: s + "_"), names.map(lambda s: "." + s),
    names.map(lambda s: s + "\n"), names.map(lambda s: s + "/x"),
    st.from_regex(r"[a-z0-9][a-z0-9_-]{47,60}[a-z0-9]", fullmatch=True),          # 49 characters or more
    st.integers(), st.booleans(), st.lists(names, max_size=2), poison,
)


@st.composite
def bad_interface_names(draw):
    kind = draw(st.sampled_from(("empty", "lo", "long", "forbidden", "other type")))
    if kind == "empty":
        return ""
    if kind == "lo":
        return "lo"
    if kind == "long":
        return draw(st.text(IFACE_CHARS, min_size=16, max_size=40))
    if kind == "forbidden":
        name = draw(interface_names)
        index = draw(st.integers(0, len(name)))
        return name[:index] + draw(st.sampled_from(IFACE_FORBIDDEN)) + name[index:]
    return draw(st.one_of(st.integers(), st.booleans(), st.none(), st.lists(interface_names, max_size=2), poison))


@st.composite
def bad_cidr_texts(draw):
    kind = draw(st.sampled_from(("host bits", "octet", "prefix", "scope", "garbage")))
    if kind == "host bits":
        version = draw(st.sampled_from((4, 6)))
        bits = 32 if version == 4 else 128
        prefix = draw(st.integers(0, bits - 1))
        network = draw(st.integers(0, 2 ** prefix - 1)) << (bits - prefix)
        host = draw(st.integers(1, 2 ** (bits - prefix) - 1))
        address = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(network | host)
        return "%s/%d" % (address, prefix)
    if kind == "octet":
        octets = draw(st.lists(st.integers(0, 255), min_size=4, max_size=4))
        octets[draw(st.integers(0, 3))] = draw(st.integers(256, 999))
        return "%s/%d" % (".".join(map(str, octets)), draw(st.integers(0, 32)))
    if kind == "prefix":
        network = draw(networks())
        return "%s/%d" % (network.network_address, network.max_prefixlen + draw(st.integers(1, 200)))
    if kind == "scope":
        network = draw(networks(6))
        return "%s%%%s/%d" % (network.network_address, draw(interface_names), network.prefixlen)
    # One line of a list file: no line break, no "#" (a comment), not blank.
    return draw(st.text(max_size=40).filter(lambda s: s.splitlines() == [s] and "#" not in s and s.strip()
                                            and not parses_as_network(s)))


@st.composite
def bad_cidr_entries(draw):
    """(entry, True when the problem is reported inside a list file)."""
    kind = draw(st.sampled_from(("text", "other type", "no cidr", "unknown key", "bad comment", "bad cidr in dict",
                                 "bad line in file", "missing file", "file and cidr", "file not a string")))
    if kind == "text":
        return draw(bad_cidr_texts()), False
    if kind == "other type":
        return draw(st.one_of(st.integers(), st.booleans(), st.none(), st.lists(json_like, max_size=3), poison)), False
    valid = draw(networks())
    if kind == "no cidr":
        return {"comment": draw(st.text(max_size=10))}, False
    if kind == "unknown key":
        return {"cidr": str(valid), draw(safe_keys.filter(lambda k: k not in ("cidr", "comment", "file"))): 1}, False
    if kind == "bad comment":
        return {"cidr": str(valid), "comment": draw(st.one_of(st.integers(), st.booleans(), st.lists(st.text()),
                                                              poison))}, False
    if kind == "bad cidr in dict":
        return {"cidr": draw(st.one_of(bad_cidr_texts(), st.integers(), st.none(), poison))}, False
    if kind == "bad line in file":
        return draw(list_file_entries([valid], extra_lines=[draw(bad_cidr_texts())])), True
    if kind == "missing file":
        return {"file": "lists/missing-%s.txt" % draw(safe_keys)}, False
    if kind == "file and cidr":
        return dict(draw(list_file_entries([valid])), cidr=str(valid)), False
    return {"file": draw(st.one_of(st.integers(), st.none(), st.just(""), st.just("  "), poison))}, False


bad_samples = st.one_of(
    st.integers(max_value=0), st.integers(SAMPLE_MAX + 1, 10 ** 12),
    st.integers(max_value=0).map("1/{}".format), st.integers(SAMPLE_MAX + 1, 10 ** 12).map("1/{}".format),
    st.integers(1, 10 ** 12).map("1/0000000{}".format),
    st.tuples(st.integers(2, 100), st.integers(1, 100)).map(lambda t: "%d/%d" % t),
    st.text(max_size=20).filter(lambda s: not sample_ok(s)),
    st.integers(4301, 6000).map(lambda n: "1/" + "9" * n),
    st.booleans(), st.none(), st.floats(), st.lists(st.integers(1, 9), max_size=2), poison,
)

bad_files = st.one_of(
    st.text(max_size=30).filter(lambda s: not s.startswith("/")),
    absolute_paths.map(lambda p: p + "/"),
    st.tuples(absolute_paths, st.characters(max_codepoint=31), absolute_paths).map("".join),
    absolute_paths.filter(lambda p: not p.startswith("/var/log/bpfleet/")),
    sink_paths.map(lambda p: p.replace("/var/log/bpfleet/", "/var/log/bpfleet/../../etc/", 1)),
    st.integers(), st.booleans(), st.none(), st.lists(absolute_paths, max_size=2), poison,
)

bad_sizes = st.one_of(
    st.integers(max_value=SIZE_MIN - 1), st.integers(0, SIZE_MIN - 1).map(str),
    st.sampled_from(("3K", "0.5k", "1T", "M", "1MM", "-1M", "1e9", "1,000,000", "0x1000", "")),
    st.integers(4301, 6000).map(lambda n: "9" * n), st.integers(16, 40).map(lambda n: "9" * n),
    st.booleans(), st.none(), st.floats(), poison,
)

bad_keeps = st.one_of(st.integers(max_value=0), st.integers(KEEP_MAX + 1), st.booleans(), st.none(),
                      st.integers(1, KEEP_MAX).map(str), st.floats(), poison)

others = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
not_a_list = st.one_of(st.text(max_size=20), st.integers(), st.booleans(),
                       st.dictionaries(safe_keys, st.integers(), max_size=2), poison)

# Values of the wrong type (or out of range) for each field.
WRONG_VALUES = {
    ("name",): bad_names,
    ("interfaces",): st.one_of(st.just([]), interface_names, st.integers(), st.booleans(),
                               st.dictionaries(interface_names, st.integers(), max_size=2), poison),
    ("xdp_mode",): st.one_of(st.text(max_size=10).filter(lambda s: s not in _policy.XDP_MODES), others, poison),
    ("filter",): st.one_of(st.text(max_size=10), others, poison),
    ("filter", "default"): st.one_of(st.text(max_size=10).filter(lambda s: s not in _policy.FILTER_DEFAULTS),
                                     others, poison),
    ("filter", "deny"): not_a_list,
    ("filter", "allow"): not_a_list,
    ("filter", "ports"): st.one_of(not_a_list, st.lists(st.integers(), min_size=1, max_size=2),
                                   st.just([{"proto": "tcp", "action": "drop"}] * (_policy.MAX_PORT_RULES + 1))),
    ("filter", "rate_limit"): st.one_of(not_a_list, st.lists(st.text(max_size=5), min_size=1, max_size=2),
                                        st.just([{"per_source": 5}] * (_policy.MAX_RATE_LIMITS + 1))),
    ("rewrite",): st.one_of(not_a_list, st.lists(st.integers(), min_size=1, max_size=2),
                            st.just([{"direction": "egress", "dscp": "ef"}]
                                    * (_policy._rewrite.MAX_REWRITE_RULES + 1))),
    ("log",): st.one_of(st.text(max_size=10), others, poison),
    ("log", "enabled"): st.one_of(st.text(max_size=5), st.integers(), st.lists(st.booleans(), max_size=2), poison),
    ("log", "fields"): st.one_of(
        st.sampled_from(_policy.LOG_FIELDS), st.integers(), st.dictionaries(safe_keys, st.integers(), max_size=2),
        st.tuples(st.lists(st.sampled_from(_policy.LOG_FIELDS), max_size=3),
                  st.text(max_size=10).filter(lambda s: s not in _policy.LOG_FIELDS)).map(lambda t: t[0] + [t[1]]),
        poison),
    ("log", "directions"): st.one_of(
        st.just([]), st.sampled_from(_policy.LOG_DIRECTIONS), st.dictionaries(safe_keys, st.integers(), max_size=2),
        st.tuples(st.lists(st.sampled_from(_policy.LOG_DIRECTIONS), max_size=2),
                  st.text(max_size=10).filter(lambda s: s not in _policy.LOG_DIRECTIONS)).map(
            lambda t: t[0] + [t[1]]),
        poison),
    ("log", "sample"): bad_samples,
    ("log", "sink"): st.one_of(st.text(max_size=10), others, poison),
    ("log", "sink", "file"): bad_files,
    ("log", "sink", "max_size"): bad_sizes,
    ("log", "sink", "keep"): bad_keeps,
    ("log", "match"): st.one_of(not_a_list, st.lists(st.integers(), min_size=1, max_size=2), st.just([{}]),
                                st.just([{"proto": "tcp"}] * (_policy.MAX_LOG_MATCH_RULES + 1))),
    ("log", "http"): st.one_of(st.text(max_size=10), others, poison),
    ("log", "http", "ports"): st.one_of(
        not_a_list, st.just([]), st.lists(st.one_of(st.integers(max_value=0), st.integers(65536, 10 ** 9), st.text(
            max_size=5), st.booleans()), min_size=1, max_size=3),
        st.just(list(range(1, _http.MAX_PORTS + 2)))),
    ("log", "http", "headers"): st.one_of(
        not_a_list, st.lists(st.sampled_from(("Content Type", "x:y", "", "caf\u00e9", "a\nb", "(x)")), min_size=1,
                             max_size=2), st.lists(st.integers(), min_size=1, max_size=2)),
    ("log", "http", "redact"): st.one_of(
        not_a_list, st.lists(st.sampled_from(("X Token", "a:b", "", "t\u00f6ken")), min_size=1, max_size=2)),
    ("log", "http", "redact_containing"): st.one_of(
        not_a_list, st.lists(st.sampled_from(("ab", "x" * (_http.MAX_SUBSTRING_LENGTH + 1), "a b", "")),
                             min_size=1, max_size=2)),
    ("log", "http", "max_bytes"): st.one_of(
        st.integers(max_value=_http.MIN_MAX_BYTES - 1), st.integers(_http.MAX_MAX_BYTES + 1, 10 ** 9),
        st.integers(_http.MIN_MAX_BYTES, _http.MAX_MAX_BYTES).map(str), st.booleans(), st.floats(), poison),
    ("log", "http", "requests_only"): st.one_of(
        st.integers(), st.sampled_from(("yes", "true", "")), st.floats(), not_a_list.filter(
            lambda value: not isinstance(value, bool)), poison),
}

MUTATION_KINDS = ("wrong value", "bad interface", "duplicate interface", "all among names", "bad cidr",
                  "in both lists", "unknown key", "junk", "missing required", "bad port rule", "bad rate limit",
                  "bad log match")

bad_ports = st.one_of(
    st.integers(max_value=0), st.integers(65536, 10 ** 9), st.integers(65536, 99999).map(str),
    st.tuples(st.integers(2, 65535), st.integers(1, 65534)).filter(lambda t: t[0] > t[1]).map(
        lambda t: "%d-%d" % t),
    st.sampled_from(("", "http", "80-", "-80", "1-2-3", "0x50", "80,443", "1e3")), st.booleans(), st.none(),
    st.floats(), st.lists(st.integers(1, 9), max_size=2), poison)
bad_rates = st.one_of(
    st.integers(max_value=0), st.integers(_policy.MAX_RATE_PPS + 1, 10 ** 12),
    st.integers(_policy.MAX_RATE_PPS + 1, 99999999).map("{}/s".format),
    st.sampled_from(("0/s", "fast", "100/min", "1e6", "", "/s", "-5/s")), st.booleans(), st.none(), st.floats(),
    poison)
bad_bursts = st.one_of(st.integers(max_value=0), st.integers(_policy.MAX_BURST + 1), st.booleans(), st.none(),
                       st.integers(1, 100).map(str), st.floats(), poison)
bad_rule_names = st.one_of(
    st.sampled_from(sorted(_policy.RULE_IDS) + ["Upper", "with space", "-lead", "trail-", "x" * 33, ""]),
    st.integers(), st.booleans(), st.none(), poison)


@st.composite
def bad_port_rule(draw):
    """(entry, field of the entry that must be named or None for the entry itself)."""
    rule = {"proto": "tcp", "port": 80, "action": "drop"}
    what = draw(st.sampled_from(("port", "icmp port", "proto", "action", "direction", "name", "missing")))
    if what == "port":
        rule["port"] = draw(bad_ports)
    elif what == "icmp port":
        rule.update(proto="icmp", port=draw(st.integers(1, 65535)))
        what = "port"
    elif what == "proto":
        rule["proto"] = draw(st.one_of(st.text(max_size=6).filter(lambda t: t not in _policy.PORT_PROTOS),
                                       st.integers(), st.none(), poison))
    elif what == "action":
        rule["action"] = draw(st.one_of(st.text(max_size=6).filter(lambda t: t not in _policy.PORT_ACTIONS),
                                        st.integers(), st.none(), poison))
    elif what == "direction":
        rule["direction"] = draw(st.one_of(st.text(max_size=6).filter(lambda t: t not in _policy.PORT_DIRECTIONS),
                                           st.integers(), poison))
    elif what == "name":
        rule["name"] = draw(bad_rule_names)
    else:
        del rule[draw(st.sampled_from(("proto", "action")))]
        what = None
    return rule, what


@st.composite
def bad_rate_limit(draw):
    limit = {"per_source": 100, "match": {"proto": "udp", "port": "5000-5010"}}
    what = draw(st.sampled_from(("per_source", "burst", "match port", "match proto", "icmp port", "missing")))
    if what == "per_source":
        limit["per_source"] = draw(bad_rates)
    elif what == "burst":
        limit["burst"] = draw(bad_bursts)
    elif what == "match port":
        limit["match"]["port"] = draw(bad_ports)
        what = "match"
    elif what == "match proto":
        limit["match"]["proto"] = draw(st.one_of(st.text(max_size=6).filter(lambda t: t not in _policy.PORT_PROTOS),
                                                 st.integers(), poison))
        what = "match"
    elif what == "icmp port":
        limit["match"] = {"proto": "icmp", "port": 7}
        what = "match"
    else:
        del limit["per_source"]
        what = None
    return limit, what


@st.composite
def bad_log_match(draw):
    """(entry, field of the entry that must be named or None for the entry itself)."""
    what = draw(st.sampled_from(("port", "src_port", "dst_port", "icmp port", "proto", "empty", "unknown")))
    if what in _policy.MATCH_PORT_KEYS:
        return {"proto": "tcp", what: draw(bad_ports)}, what
    if what == "icmp port":
        return {"proto": draw(st.sampled_from(("icmp", 1, 47))), "port": draw(st.integers(1, 65535))}, None
    if what == "proto":
        return {"proto": draw(st.one_of(st.text(max_size=6).filter(lambda t: t not in _policy.LOG_MATCH_PROTOS),
                                        st.integers(max_value=-1), st.integers(256), st.none(), poison))}, "proto"
    if what == "empty":
        return {}, None
    return {"proto": "udp", draw(safe_keys.map(lambda k: "zz_" + k)): 1}, None


@st.composite
def mutations(draw, raw):
    """(mutated copy of raw, path of the problem that must be reported, kind)."""
    raw = copy.deepcopy(raw)
    kind = draw(st.sampled_from(MUTATION_KINDS))
    if kind == "wrong value":
        path = draw(st.sampled_from(sorted(WRONG_VALUES)))
        return set_at(raw, path, draw(WRONG_VALUES[path])), path, kind
    if kind == "bad interface":
        return raw, insert_into(raw, ("interfaces",), draw, draw(bad_interface_names())), kind
    if kind == "duplicate interface":
        twice = draw(interface_names)
        insert_into(raw, ("interfaces",), draw, twice)
        insert_into(raw, ("interfaces",), draw, twice)
        return raw, ("interfaces",), kind
    if kind == "all among names":
        insert_into(raw, ("interfaces",), draw, draw(interface_names))
        insert_into(raw, ("interfaces",), draw, _policy.ALL_INTERFACES)
        return raw, ("interfaces",), kind
    if kind == "bad cidr":
        entry, in_file = draw(bad_cidr_entries())
        where = insert_into(raw, ("filter", draw(st.sampled_from(("deny", "allow")))), draw, entry)
        return raw, where + ((" (%s" % entry["file"],) if in_file else ()), kind
    if kind == "in both lists":
        network = draw(networks())
        for key in ("deny", "allow"):
            for entry in draw(list_layouts([network])):
                insert_into(raw, ("filter", key), draw, entry)
        return raw, ("filter",), kind
    if kind == "unknown key":
        node = draw(st.sampled_from([()] + [p for p in node_paths(raw) if isinstance(get_at(raw, p), dict)]))
        # Typos of real keys (case matters), or keys no schema version will use.
        key = draw(st.one_of(st.sampled_from(TOP_KEYS + ("deny_list", "Default", "directon", "enable")).map(
            lambda k: k[0].upper() + k[1:] if k in TOP_KEYS else k), safe_keys.map(lambda k: "zz_" + k)))
        get_at(raw, node)[key] = draw(json_like)
        return raw, node + (key,), kind
    if kind == "junk":
        path = draw(st.sampled_from([()] + node_paths(raw)))
        junk = draw(st.one_of(poison, st.text(max_size=10), st.none(), st.integers())) if not path else draw(poison)
        return set_at(raw, path, junk), path, kind
    if kind in ("bad port rule", "bad rate limit"):
        list_key = "ports" if kind == "bad port rule" else "rate_limit"
        entry, field = draw(bad_port_rule() if kind == "bad port rule" else bad_rate_limit())
        flt = raw.get("filter")
        if isinstance(flt, dict) and isinstance(flt.get(list_key), list):
            # Keep room under the rule limit, so the problem reported is this entry's.
            del flt[list_key][_policy.MAX_PORT_RULES - 1 if list_key == "ports" else _policy.MAX_RATE_LIMITS - 1:]
        where = insert_into(raw, ("filter", list_key), draw, entry)
        return raw, where + ((field,) if field else ()), kind
    if kind == "bad log match":
        entry, what = draw(bad_log_match())
        where = insert_into(raw, ("log", "match"), draw, entry)
        return raw, where + ((what,) if what else ()), kind
    key = draw(st.sampled_from(("name", "interfaces")))
    raw.pop(key, None)
    return raw, (key,), kind


sources = st.one_of(st.none(), st.just(""), st.just("playbooks/policies/edge.yml"),
                    st.text(min_size=1, max_size=30))
# (top level), or segments `key` / `[index]` joined by dots, e.g. filter.deny[3].cidr, then for
# a line of a list file " (lists/x.txt line 5)".
PATH_RE = re.compile(r"(\(top level\)|(?:[^\s.\[\]:]+|\[\d+\])(?:\.[^\s.\[\]:]+|\[\d+\])*)"
                     r"(?: \([^()\n]* line \d+\))?: \S")


def check_problems(problems, source, strict_paths=True):
    """Each problem is 'source: path: message'; returns the paths."""
    assert isinstance(problems, list) and problems, "a PolicyError without problems"
    shown = source or "<inline policy>"
    paths = []
    for problem in problems:
        assert isinstance(problem, str), problem
        assert problem.startswith(shown + ": "), "problem does not start with %r: %r" % (shown + ": ", problem)
        rest = problem[len(shown) + 2:]
        if strict_paths:
            match = PATH_RE.match(rest)
            assert match, "no path in problem %r" % problem
            paths.append(match.group(0)[:-3])
        else:
            assert ": " in rest and not rest.startswith(": "), "no path in problem %r" % problem
            paths.append(rest.split(": ", 1)[0])
    return paths


def related(problem_path, where):
    """A problem at `problem_path` speaks about `where` (the same field, a parent, or a child).
    A `where` ending in ' (name' asks for a problem on a line of that list file."""
    where = fmt(where)
    if problem_path == "(top level)" or not where or problem_path == where:
        return True
    if " (" in where:
        return problem_path.startswith(where + " line ")
    for longer, shorter in ((where, problem_path), (problem_path, where)):
        if longer.startswith(shorter + ".") or longer.startswith(shorter + "["):
            return True
    return False


def validated(raw, source="prop.yml"):
    before = copy.deepcopy(raw)
    model, warnings = _policy.validate(raw, source, read_file=read_list_file)
    assert raw == before, "validate() changed the policy it was given"
    for warning in warnings:
        assert warning.startswith(source + ": "), warning
    return model, warnings


def rendered_of(raw):
    model, warnings = validated(raw)
    return _render.render(model), warnings


def contents_of(rendered):
    """The list maps' entries as [CIDR, rule id], decoded from the packed transfer form."""
    return dict((name, [[_maps.decode_lpm_key(key), packed.rule] for key in packed.key_list()])
                for name, packed in _packing.unpack_lists(rendered["lists"]).items())


def schema_fields(node, path=""):
    """Field paths of a JSON Schema node: 'log.sink.keep', list items as 'filter.deny[]'."""
    found = set()
    for key, child in (node.get("properties") or {}).items():
        child_path = "%s.%s" % (path, key) if path else key
        found |= {child_path} | schema_fields(child, child_path)
    if isinstance(node.get("items"), dict):
        found |= {path + "[]"} | schema_fields(node["items"], path + "[]")
    for variant in (node.get("oneOf") or []) + (node.get("anyOf") or []) + (node.get("allOf") or []):
        found |= schema_fields(variant, path)
    return found


def test_strategies_know_every_schema_field():
    schema = schema_fields(_policy.POLICY_SCHEMA)
    unknown = sorted(schema - GENERATED_FIELDS)
    assert not unknown, ("schema fields the property strategies do not generate: %s; teach valid_policies(), "
                         "WRONG_VALUES and GENERATED_FIELDS in %s about them" % (", ".join(unknown), __file__))
    assert not GENERATED_FIELDS - schema, "fields gone from the schema: %s" % sorted(GENERATED_FIELDS - schema)


# --- valid policies ---------------------------------------------------------------------------------

def reorder_keys(value, rnd):
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return dict((key, reorder_keys(child, rnd)) for key, child in items)
    if isinstance(value, list):
        return [reorder_keys(child, rnd) for child in value]
    return value


@st.composite
def size_spellings(draw, value):
    """Another spelling of the same log.sink.max_size (bytes, K, M or G when exact)."""
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]+)(\.0)?\s*([kKmMgG]?)[bB]?", value)
        if not match:
            return value
        value = int(match.group(1)) * SIZE_FACTORS[match.group(3)]
    spellings = [value, str(value)]
    for suffix in "KMG":
        if value % SIZE_FACTORS[suffix] == 0:
            spellings.append("%d%s" % (value // SIZE_FACTORS[suffix], draw(st.sampled_from(
                (suffix, suffix.lower(), suffix + "B", " " + suffix)))))
    return draw(st.sampled_from(spellings))


@st.composite
def equivalent_variants(draw, raw):
    """The same policy written differently: keys reordered, lists shuffled, entries duplicated,
    restyled and moved in and out of list files, equal values spelled differently.
    Returns (variant, whether list entries were duplicated)."""
    rnd = draw(st.randoms(use_true_random=False))
    variant = copy.deepcopy(raw)
    duplicated = False
    flt = variant.get("filter")
    if isinstance(flt, dict):
        for key in ("deny", "allow"):
            nets = list_networks(flt.get(key))
            if nets:
                extra = [rnd.choice(nets) for count in range(rnd.randint(0, 3))]
                duplicated = duplicated or bool(extra)
                nets.extend(extra)
                rnd.shuffle(nets)
                flt[key] = draw(list_layouts(nets))
    if isinstance(variant["interfaces"], list):
        rnd.shuffle(variant["interfaces"])
    log = variant.get("log")
    if isinstance(log, dict):
        for key in ("fields", "directions"):
            if log.get(key):
                log[key] = log[key] + [rnd.choice(log[key]) for count in range(rnd.randint(0, 2))]
                rnd.shuffle(log[key])
        if "sample" in log:
            number = int(str(log["sample"]).rpartition("/")[2])
            log["sample"] = rnd.choice((number, "1/%d" % number, " 1 / %d " % number))
        sink = log.get("sink") or {}
        if "max_size" in sink:
            sink["max_size"] = draw(size_spellings(sink["max_size"]))
        if log.get("match"):
            rnd.shuffle(log["match"])
        http = log.get("http") or {}
        for key in ("ports", "headers", "redact", "redact_containing"):
            if http.get(key):
                rnd.shuffle(http[key])
                if key != "ports":
                    http[key] = [rnd.choice((name.upper(), name.lower(), name)) for name in http[key]]
    return reorder_keys(variant, rnd), duplicated


@_settings(80)
@given(data=st.data())
def test_valid_policies_render_identically_however_written(data):
    raw = data.draw(valid_policies(), label="policy")
    rendered, warnings = rendered_of(raw)
    source = rendered["source"]
    assert source and "{{" not in source and "{%" not in source
    assert rendered["source_digest"] == "sha256:" + hashlib.sha256(source.encode("utf-8")).hexdigest()
    assert rendered["name"] == raw["name"]
    assert rendered["programs"][0]["function"] == "bpfleet_xdp"
    assert len({program["pin"] for program in rendered["programs"]}) == len(rendered["programs"])
    # The list maps hold exactly the policy's prefixes (oracle: ipaddress on the raw policy).
    deny, allow = prefix_sets(raw)
    contents = contents_of(rendered)
    for key, expected in (("deny", deny), ("allow", allow)):
        entries = contents[key + "_v4"] + contents[key + "_v6"]
        assert sorted(cidr for cidr, rule in entries) == sorted(str(network) for network in expected)
        assert {rule for cidr, rule in entries} <= {_policy.RULE_IDS[key]}
    json.dumps(rendered)

    variant, duplicated = data.draw(equivalent_variants(raw), label="variant")
    again, variant_warnings = rendered_of(variant)
    assert again["source"].encode("utf-8") == source.encode("utf-8")
    assert json.dumps(again, sort_keys=True) == json.dumps(rendered, sort_keys=True)
    if duplicated:
        assert any("duplicate" in warning for warning in variant_warnings), variant_warnings
    event("warnings" if warnings else "no warnings")


@st.composite
def list_edits(draw, raw):
    """raw with only filter.deny / filter.allow edited: entries added, removed, moved between
    the lists, or only laid out anew (the same sets)."""
    rnd = draw(st.randoms(use_true_random=False))
    edited = copy.deepcopy(raw)
    flt = edited.get("filter")
    if not isinstance(flt, dict):
        flt = edited["filter"] = {}
    lists = {key: list_networks(flt.get(key)) for key in ("deny", "allow")}
    for _step in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(("add", "remove", "move")))
        key = draw(st.sampled_from(("deny", "allow")))
        other = "allow" if key == "deny" else "deny"
        if operation == "add":
            network = draw(networks())
            if network not in lists[other]:
                lists[key].append(network)
        elif lists[key]:
            network = rnd.choice(lists[key])
            lists[key] = [n for n in lists[key] if n != network]
            if operation == "move":
                lists[other].append(network)
    for key, nets in lists.items():
        rnd.shuffle(nets)
        if nets or key in flt:
            flt[key] = draw(list_layouts(nets))
    return edited


@_settings(80)
@given(data=st.data())
def test_maps_digest_changes_iff_the_prefixes_change(data):
    raw = data.draw(valid_policies(), label="policy")
    edited = data.draw(list_edits(raw), label="edited")
    first = rendered_of(raw)[0]
    second = rendered_of(edited)[0]
    same_prefixes = prefix_sets(raw) == prefix_sets(edited)
    event("same prefixes" if same_prefixes else "prefixes changed")
    assert (first["maps_digest"] == second["maps_digest"]) == same_prefixes
    # A list edit is a map delta on the host: nothing else may change, above all not the source.
    assert second["source_digest"] == first["source_digest"]
    assert second["source"] == first["source"]
    unchanged = ("lists", "maps_digest")
    assert ({k: v for k, v in second.items() if k not in unchanged}
            == {k: v for k, v in first.items() if k not in unchanged})


# --- invalid policies ---------------------------------------------------------------------------------

@_settings(200)
@given(data=st.data())
def test_invalid_policies_raise_policy_error_naming_source_and_path(data):
    raw = data.draw(valid_policies(), label="policy")
    source = data.draw(sources, label="source")
    # One to three mutations in different top-level fields: all of them must be reported.
    expected = []
    for _count in range(data.draw(st.integers(1, 3), label="mutations")):
        mutated, where, kind = data.draw(mutations(raw), label="mutation")
        if not isinstance(mutated, dict) or not where or where[0] in {w[0] for w, k in expected}:
            if not expected:
                raw, expected = mutated, [(where, kind)]
            break
        raw = mutated
        expected.append((where, kind))
        event(kind)
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, source, read_file=read_list_file)
    paths = check_problems(caught.value.problems, source)
    for where, kind in expected:
        assert any(related(path, where) for path in paths), (
            "%s at %s: no problem reported there: %r" % (kind, fmt(where) or "(top level)", caught.value.problems))


@_settings(150)
@given(data=st.data())
def test_arbitrary_junk_is_valid_or_a_policy_error_never_a_crash(data):
    raw = data.draw(valid_policies(), label="policy")
    source = data.draw(sources, label="source")
    if data.draw(st.booleans(), label="add a key"):
        node = data.draw(st.sampled_from([()] + [p for p in node_paths(raw) if isinstance(get_at(raw, p), dict)]))
        get_at(raw, node)[data.draw(st.text(max_size=12), label="key")] = data.draw(any_json, label="value")
    else:
        # Any node of this policy, or any field of the schema (made when missing).
        path = data.draw(st.sampled_from([()] + node_paths(raw) + sorted(WRONG_VALUES)), label="path")
        raw = set_at(raw, path, data.draw(any_json, label="junk"))
    reader = data.draw(st.sampled_from((read_list_file, None)), label="read_file")
    try:
        model, warnings = _policy.validate(raw, source, read_file=reader)
    except _policy.PolicyError as error:
        check_problems(error.problems, source, strict_paths=False)
        event("policy error")
    else:
        event("still valid")
        json.dumps(model, allow_nan=False)
        _render.render(model)


# Every type at every field, systematically (the random tests reach some pairs only rarely).
FULL = {
    "name": "edge", "interfaces": ["eth0"], "xdp_mode": "auto",
    "filter": {"default": "allow", "deny": [{"cidr": "203.0.113.0/24", "comment": "c"},
                                            {"file": list_file("192.0.2.0/24 # test\n")}],
               "allow": ["198.51.100.7/32"],
               "ports": [{"name": "telnet", "proto": "tcp", "port": 23, "direction": "ingress", "action": "drop",
                          "comment": "c"}],
               "rate_limit": [{"name": "web", "match": {"proto": "tcp", "port": "80-81"}, "per_source": "100/s",
                               "burst": 200, "comment": "c"}]},
    "rewrite": [{"name": "voice", "direction": "egress", "match": {"src": "10.0.0.0/8", "dst": "10.20.0.0/16",
                                                                    "proto": "udp", "src_port": 5060,
                                                                    "dst_port": "5060-5080"},
                 "vlan": {"push": 120, "pcp": 3}, "dscp": "ef", "comment": "c"}],
    "log": {"enabled": True, "fields": ["src_ip"], "directions": ["ingress"], "sample": "1/1",
            "match": [{"proto": "tcp", "port": 80, "src_port": "1024-65535", "dst_port": 80}],
            "http": {"ports": [80], "headers": ["host"], "redact": ["x-session"], "redact_containing": ["auth"],
                     "max_bytes": 512},
            "sink": {"file": "/var/log/bpfleet/x", "max_size": "1M", "keep": 3}},
}
POISON_SAMPLES = (1.5, float("nan"), float("inf"), [1.5], {"zz_junk": 1}, [{"zz_junk": 1}])
TYPE_SAMPLES = (None, True, False, 0, 1, -1, 2 ** 64, "", "text", "1/1", "all", [], [1], [None], [[]], {},
                {"cidr": 1}, {"file": None}) + POISON_SAMPLES
FIELD_PATHS = sorted(set(WRONG_VALUES) | set(node_paths(FULL)), key=fmt)


@pytest.mark.parametrize("path", FIELD_PATHS, ids=fmt)
def test_every_field_takes_every_type_without_crashing(path):
    for value in TYPE_SAMPLES:
        raw = set_at(copy.deepcopy(FULL), path, copy.deepcopy(value))
        try:
            _policy.validate(raw, "types.yml", read_file=read_list_file)
        except _policy.PolicyError as error:
            paths = check_problems(error.problems, "types.yml")
            assert any(related(problem_path, path) for problem_path in paths), (value, error.problems)
        else:
            assert value not in POISON_SAMPLES, "%s: %r was accepted" % (fmt(path), value)


# --- gaps the property tests found, fixed in the validator; kept as regression cases -------

MINIMAL = {"name": "edge", "interfaces": ["eth0"]}


@pytest.mark.parametrize("change, path", [
    pytest.param({"name": "edge\n"}, "name", id="name-trailing-newline"),
    pytest.param({"interfaces": ["eth0\n"]}, "interfaces[0]", id="interface-trailing-newline"),
    pytest.param({"filter": {"deny": ["fe80::%eth0/64"]}}, "filter.deny[0]", id="cidr-with-ipv6-scope"),
    pytest.param({"log": {"sample": "1/" + "9" * 4301}}, "log.sample", id="sample-too-many-digits"),
    pytest.param({"log": {"sink": {"file": "/var/log/a\x00b.jsonl"}}}, "log.sink.file", id="sink-file-with-nul"),
    pytest.param({"log": {"sink": {"max_size": "9" * 5000}}}, "log.sink.max_size", id="size-too-many-digits"),
    pytest.param({"log": {"http": {"headers": ["host\n"]}}}, "log.http.headers[0]", id="header-trailing-newline"),
    pytest.param({"log": {"http": {"redact_containing": ["tok\n"]}}}, "log.http.redact_containing[0]",
                 id="part-trailing-newline"),
])
def test_former_gaps_are_refused(change, path):
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(dict(MINIMAL, **change), "gap.yml")
    assert any(problem.startswith("gap.yml: %s: " % path) for problem in caught.value.problems), \
        caught.value.problems
