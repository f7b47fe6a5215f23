# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Policy schema, validation and the normalized model.

Pure Python (stdlib only) so the same code validates on the controller, in unit tests and,
if ever needed, on a host. Every error carries the file and the path inside the policy, and
validation reports all errors at once: an operator fixing a policy in a pull request should
not have to iterate one error per CI run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import hashlib
import json
import re

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _http, _prefixes, _rewrite, _safe_files

SCHEMA_VERSION = 1

XDP_MODES = ("auto", "native", "generic")
ALL_INTERFACES = "all"
FILTER_DEFAULTS = ("allow", "deny")
LOG_DIRECTIONS = ("ingress", "egress")

# Fields a header record can carry (DESIGN.md section 4). `ts`, `host`, `iface` and `dir`
# are always written; these are the ones a policy chooses.
LOG_FIELDS = (
    "action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip",
    "ttl", "len", "proto", "src_port", "dst_port", "tcp_flags", "rewrite",
)
DEFAULT_LOG_FIELDS = ("action", "rule", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "tcp_flags", "len")
DEFAULT_LOG_FILE = "/var/log/bpfleet/headers.jsonl"

# Map capacities and rule ids are the kernel/user-space contract (_contract): the lists have
# fixed ids, port rules and rate limits take ids from their position in the policy.
DENY_V4_MAX = _contract.DENY_V4_MAX
DENY_V6_MAX = _contract.DENY_V6_MAX
ALLOW_V4_MAX = _contract.ALLOW_V4_MAX
ALLOW_V6_MAX = _contract.ALLOW_V6_MAX
RULE_IDS = _contract.RULE_IDS
LIST_FAMILIES = _contract.LIST_FAMILIES      # (map name, address family, list)
PORT_RULE_FIRST_ID = _contract.PORT_RULE_FIRST_ID
MAX_PORT_RULES = 64
RATE_LIMIT_FIRST_ID = _contract.RATE_LIMIT_FIRST_ID
MAX_RATE_LIMITS = 32

PORT_PROTOS = ("tcp", "udp", "icmp", "any")
PORT_ACTIONS = ("drop", "pass", "log")
PORT_DIRECTIONS = ("ingress", "egress")
RATE_PROTOS = PORT_PROTOS
# A token bucket of up to 10 M packets/s per source: anything faster is not a limit a veth
# or a NIC queue would ever apply, and it keeps the kernel's fixed-point arithmetic in u64.
MAX_RATE_PPS = 10000000
MAX_BURST = 10000000
RULE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,30}[a-z0-9])?$"
PORT_PATTERN = r"^\s*[0-9]{1,5}\s*(-\s*[0-9]{1,5}\s*)?$"
RATE_PATTERN = r"^\s*[0-9]{1,8}\s*(/\s*s)?\s*$"

NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,46}[a-z0-9])?$"
IFACE_PATTERN = r"^(?!\.\.?$)[^/\s:]{1,15}$"
SAMPLE_PATTERN = r"^\s*1\s*/\s*[0-9]{1,7}\s*$"
SIZE_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,6})?\s*[kKmMgG]?[bB]?$"
MAX_SINK_KEEP = 1000

# log.match: which packets produce records at all, decided in the kernel before sampling.
MAX_LOG_MATCH_RULES = 16
LOG_MATCH_PROTOS = ("tcp", "udp", "icmp")
MATCH_PORT_KEYS = ("port", "src_port", "dst_port")

_NAME_RE = re.compile(NAME_PATTERN)
# IFNAMSIZ is 16 including the NUL; '/' and whitespace are rejected by the kernel.
_IFACE_RE = re.compile(IFACE_PATTERN)
_SAMPLE_RE = re.compile(r"^\s*1\s*/\s*([0-9]{1,7})\s*$")
_SIZE_RE = re.compile(r"^([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([kKmMgG]?)[bB]?$")
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_RULE_NAME_RE = re.compile(RULE_NAME_PATTERN)
_PORT_RE = re.compile(r"^\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?$")
_RATE_RE = re.compile(r"^\s*([0-9]{1,8})\s*(?:/\s*s)?\s*$")


def _port_schema(what):
    return {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                      {"type": "string", "pattern": PORT_PATTERN}],
            "description": what}


def _rule_name_schema(kind):
    return {"type": "string", "pattern": RULE_NAME_PATTERN,
            "description": "Names the rule's counters in the facts and its records' `rule` field (1-32 "
                           "characters of a-z, 0-9, `.`, `-`, `_`). Default: `%s[<index>]`." % kind}


def _log_port_schema(what):
    return {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                      {"type": "string", "pattern": PORT_PATTERN}],
            "description": what + " A port (1-65535) or an inclusive range such as `8000-8099`."}


def _header_names_schema(what, default):
    return {"type": "array", "uniqueItems": True, "default": list(default),
            "items": {"type": "string", "pattern": _http.TOKEN_PATTERN}, "description": what}


def _cidr_list_schema(what):
    return {
        "type": "array",
        "default": [],
        "description": what,
        "items": {"oneOf": [
            {"type": "string", "description": "An IPv4 or IPv6 network in CIDR notation with the host bits clear."},
            {"type": "object", "additionalProperties": False, "required": ["cidr"],
             "description": "A network with a comment that stays in git (not on the host).",
             "properties": {"cidr": {"type": "string", "description": "The network in CIDR notation."},
                            "comment": {"type": "string", "description": "Why this entry exists."}}},
            {"type": "object", "additionalProperties": False, "required": ["file"],
             "description": "A list file: one CIDR per line, `#` starts a comment. The path is relative to the "
                            "policy file (or, for an inline policy, searched like a `files/` source).",
             "properties": {"file": {"type": "string", "description": "Path of the list file."}}},
        ]},
    }


# The published schema (docs/policy.schema.json) and the reference page (docs/policy-reference.md)
# are generated from this document, and the validator takes the allowed keys from it, so the
# three cannot drift apart. The validator still does the checks a JSON Schema cannot express
# (host bits, overlaps between lists, map limits) and words the errors for people.
POLICY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:bpfleet:policy:v%d" % SCHEMA_VERSION,
    "title": "bpfleet policy",
    "description": "Which traffic a host filters with XDP and which packet headers it logs, on which interfaces.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "interfaces"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN,
                 "description": "1-48 characters of a-z, 0-9, `-` and `_`, starting and ending with a letter or "
                                "digit. Names the pins (/sys/fs/bpf/bpfleet/<name>/) and the state "
                                "(/var/lib/bpfleet/<name>/). A host may carry several policies on different "
                                "interfaces."},
        "interfaces": {"oneOf": [
            {"type": "array", "minItems": 1, "uniqueItems": True,
             "items": {"type": "string", "pattern": IFACE_PATTERN, "not": {"const": "lo"}}},
            {"const": ALL_INTERFACES}],
            "description": "Interfaces to attach to (at most 15 characters, no `/`, not `lo`), or `all`: every "
                           "interface of the host except `lo`, resolved on each host at each run (a new "
                           "interface is picked up by the next run). A named interface missing on a host fails "
                           "that host's task before any change."},
        "xdp_mode": {"enum": list(XDP_MODES), "default": "auto",
                     "description": "`auto` tries native XDP and falls back to generic (the facts say which is in "
                                    "use); `native` and `generic` demand that mode."},
        "filter": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "The filter, in this order: the allow list passes, the deny list drops (both by "
                           "source address), then the port rules, then the rate limits, then `default`. Non-IP "
                           "frames (ARP) and IPv6 neighbour discovery always pass. Ingress runs in XDP; egress "
                           "port rules at tc egress.",
            "properties": {
                "default": {"enum": list(FILTER_DEFAULTS), "default": "allow",
                            "description": "What happens to an IP packet that no list matches. `deny` makes the "
                                           "allow list the only way in."},
                "deny": _cidr_list_schema("Source networks to drop. IPv4 and IPv6 may be mixed. Limits: %d IPv4 "
                                          "and %d IPv6 prefixes." % (DENY_V4_MAX, DENY_V6_MAX)),
                "allow": _cidr_list_schema("Source networks that pass even when a deny entry matches (exceptions),"
                                           " and the only sources that pass with `default: deny`. Limits: %d IPv4 "
                                           "and %d IPv6 prefixes. A network in both lists is an error."
                                           % (ALLOW_V4_MAX, ALLOW_V6_MAX)),
                "ports": {
                    "type": "array", "default": [], "maxItems": MAX_PORT_RULES,
                    "description": "Port rules, checked in order after the lists: the first rule that matches "
                                   "a packet decides it (`log` rules record the packet and let the next rules "
                                   "decide). Sources on the allow list skip them; sources on the deny list never "
                                   "reach them. At most %d rules." % MAX_PORT_RULES,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["proto", "action"],
                        "properties": {
                            "name": _rule_name_schema("ports"),
                            "proto": {"enum": list(PORT_PROTOS),
                                      "description": "`tcp`, `udp`, `icmp` (ICMP and ICMPv6, except IPv6 "
                                                     "neighbour discovery, which always passes) or `any` (every "
                                                     "IP packet; with `port`, TCP and UDP)."},
                            "port": _port_schema("Destination port (1-65535) or range `low-high`, such as "
                                                 "`6000-6100`. Not allowed for icmp. Without it the rule "
                                                 "matches every port of its protocol."),
                            "direction": {"enum": list(PORT_DIRECTIONS), "default": "ingress",
                                          "description": "`ingress` rules run in XDP; `egress` rules run at tc "
                                                         "egress on packets this host sends (a tc program is "
                                                         "attached for them even without logging)."},
                            "action": {"enum": list(PORT_ACTIONS),
                                       "description": "`drop`, `pass` (skips the filter default, but not the "
                                                      "rate limits) or `log` (a header record for every match, "
                                                      "regardless of log.sample; needs the log section)."},
                            "comment": {"type": "string", "description": "Why this rule exists."},
                        },
                    },
                },
                "rate_limit": {
                    "type": "array", "default": [], "maxItems": MAX_RATE_LIMITS,
                    "description": "Per-source token buckets at XDP (ingress). A packet matching a rule takes a "
                                   "token from its source's bucket; with none left it is dropped and counted as "
                                   "`rate_limited`. Every matching rule applies. Allow-listed sources are "
                                   "exempt. At most %d rules; buckets live in an LRU map of %d sources per "
                                   "policy." % (MAX_RATE_LIMITS, _contract.RATE_BUCKETS_ENTRIES),
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["per_source"],
                        "properties": {
                            "name": _rule_name_schema("rate_limit"),
                            "match": {
                                "type": "object", "additionalProperties": False, "default": {},
                                "description": "Which packets count against the bucket. Empty: every IP packet.",
                                "properties": {
                                    "proto": {"enum": list(RATE_PROTOS), "default": "any",
                                              "description": "As in filter.ports."},
                                    "port": _port_schema("Destination port or range (tcp, udp, any)."),
                                },
                            },
                            "per_source": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_RATE_PPS},
                                                     {"type": "string", "pattern": RATE_PATTERN}],
                                           "description": "Packets per second per source address (`2000/s` or "
                                                          "2000), 1 to %d." % MAX_RATE_PPS},
                            "burst": {"type": "integer", "minimum": 1, "maximum": MAX_BURST,
                                      "description": "Bucket size in packets: how many may arrive at once "
                                                     "after a quiet spell. Default: one second's worth "
                                                     "(`per_source`)."},
                            "comment": {"type": "string", "description": "Why this limit exists."},
                        },
                    },
                },
            },
        },
        "rewrite": _rewrite.SCHEMA,
        "log": {
            "type": "object", "additionalProperties": False,
            "description": "Header records. Without this section nothing is logged and no tc program is attached.",
            "properties": {
                "enabled": {"type": "boolean", "default": True,
                            "description": "Produce header records (default true when the section exists)."},
                "fields": {"type": "array", "uniqueItems": True, "items": {"enum": list(LOG_FIELDS)},
                           "default": list(DEFAULT_LOG_FIELDS),
                           "description": "Fields of each JSON record besides the always present `ts`, `host`, "
                                          "`iface` and `dir`. Records keep the schema's order."},
                "directions": {"type": "array", "minItems": 1, "uniqueItems": True,
                               "items": {"enum": list(LOG_DIRECTIONS)}, "default": list(LOG_DIRECTIONS),
                               "description": "tc clsact hooks that log. Drops at XDP are logged when `ingress` is "
                                              "listed."},
                "sample": {"oneOf": [{"type": "string", "pattern": SAMPLE_PATTERN},
                                     {"type": "integer", "minimum": 1, "maximum": 1000000}],
                           "default": "1/1",
                           "description": "Log one packet in N (`1/N`, N from 1 to 1,000,000; a bare integer N "
                                          "means the same), chosen at random in the kernel."},
                "match": {
                    "type": "array", "maxItems": MAX_LOG_MATCH_RULES, "default": [],
                    "description": "Log only packets that match at least one rule (checked in the kernel before "
                                   "`sample`, so an unlogged packet costs a few comparisons). Empty or absent: "
                                   "every packet. At most %d rules." % MAX_LOG_MATCH_RULES,
                    "items": {
                        "type": "object", "additionalProperties": False, "minProperties": 1,
                        "description": "All the fields given must match.",
                        "properties": {
                            "proto": {"oneOf": [{"enum": list(LOG_MATCH_PROTOS)},
                                                {"type": "integer", "minimum": 0, "maximum": 255}],
                                      "description": "`tcp`, `udp`, `icmp` (ICMP and ICMPv6, as in filter.ports) "
                                                     "or an IP protocol number (0-255). Without it, a rule with "
                                                     "a port matches TCP and UDP."},
                            "port": _log_port_schema("Source or destination port, either one (like tcpdump's "
                                                     "`port 80`): both directions of a conversation."),
                            "src_port": _log_port_schema("Source port."),
                            "dst_port": _log_port_schema("Destination port."),
                        },
                    },
                },
                "http": {
                    "type": "object", "additionalProperties": False,
                    "description": "Capture HTTP/1.x request headers: a TCP segment to one of `ports` whose payload "
                                   "starts with a request method is copied (up to `max_bytes`) with the record; the "
                                   "kernel blanks the values of sensitive headers and query parameters before the "
                                   "record leaves it, and the agent writes them as `[REDACTED]`. Records carry an "
                                   "`http` object (docs/logging-http.md). Absent: no payload is captured.",
                    "properties": {
                        "ports": {"type": "array", "minItems": 1, "maxItems": _http.MAX_PORTS, "uniqueItems": True,
                                  "default": list(_http.DEFAULT_PORTS),
                                  "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                                  "description": "Server ports (TCP destination ports of requests), at most %d. "
                                                 "Ingress captures requests to this host, egress requests it "
                                                 "sends." % _http.MAX_PORTS},
                        "headers": _header_names_schema(
                            "Header names to keep (any case; RFC 9110 tokens). Other headers are left out, "
                            "except sensitive ones, which appear with the value `[REDACTED]`.",
                            _http.DEFAULT_HEADERS),
                        "redact": _header_names_schema(
                            "More header and query parameter names whose values are never logged, added to "
                            "the defaults: %s." % ", ".join(_http.DEFAULT_REDACT_NAMES), ()),
                        "redact_containing": {
                            "type": "array", "uniqueItems": True, "default": [],
                            "items": {"type": "string", "pattern": _http.TOKEN_PATTERN,
                                      "minLength": _http.MIN_SUBSTRING_LENGTH,
                                      "maxLength": _http.MAX_SUBSTRING_LENGTH},
                            "description": "More substrings (%d-%d characters) that make any name containing them "
                                           "sensitive, added to the defaults: %s. Names are compared lowercase, "
                                           "with `_` read as `-`." % (
                                               _http.MIN_SUBSTRING_LENGTH, _http.MAX_SUBSTRING_LENGTH,
                                               ", ".join(_http.DEFAULT_REDACT_CONTAINING))},
                        "requests_only": {"type": "boolean", "default": False,
                                          "description": "Of the packets the loggers see pass, record only HTTP "
                                                         "request segments (to `ports`, payload starting with a "
                                                         "request method): no record for responses, ACKs, later "
                                                         "segments or other traffic. Drops and `log` port rules "
                                                         "are recorded as before. For gateways that want a request "
                                                         "log, not a packet log: a few records per request fewer "
                                                         "for the agent to write."},
                        "max_bytes": {"type": "integer", "minimum": _http.MIN_MAX_BYTES,
                                      "maximum": _http.MAX_MAX_BYTES, "default": _http.DEFAULT_MAX_BYTES,
                                      "description": "Bytes of a request captured and scanned in the kernel "
                                                     "(%d-%d). Headers that do not fit are logged as truncated; "
                                                     "the kernel's cost grows with it (docs/logging-http.md)."
                                                     % (_http.MIN_MAX_BYTES, _http.MAX_MAX_BYTES)},
                    },
                },
                "sink": {
                    "type": "object", "additionalProperties": False, "default": {},
                    "description": "Where the agent writes the records.",
                    "properties": {
                        "file": {"type": "string", "pattern": "^/", "default": DEFAULT_LOG_FILE,
                                 "description": (
                                     "Absolute path of the JSON-lines file, beneath a directory the host role allows "
                                     "(`bpfleet_host_agent_sink_dirs`, default `/var/log/bpfleet/`); no `.` or `..` "
                                     "components. Checked on the controller and again on the host, where no symlink "
                                     "below that directory is followed (docs/security.md).")},
                        "max_size": {"oneOf": [{"type": "integer", "minimum": 1},
                                               {"type": "string", "pattern": SIZE_PATTERN}],
                                     "description": "Rotate the file when it reaches this size (bytes, or with a "
                                                    "K, M or G suffix). Without it the agent never rotates; "
                                                    "logrotate with SIGHUP works either way."},
                        "keep": {"type": "integer", "minimum": 1, "maximum": MAX_SINK_KEEP, "default": 5,
                                 "description": "Rotated files to keep (file.1 ... file.N)."},
                    },
                },
            },
        },
    },
}


def schema_node(*path):
    """The schema of a nested field, e.g. schema_node("log", "sink")."""
    node = POLICY_SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def _keys(*path):
    return tuple(schema_node(*path)["properties"])


class PolicyError(ValueError):
    """Raised with every problem found in a policy, each as 'file: path: message'."""

    def __init__(self, problems):
        self.problems = list(problems)
        super(PolicyError, self).__init__("\n".join(self.problems))


# A list file may hold a million lines: report only the first few duplicates of each list.
MAX_DUPLICATE_WARNINGS = 10


class _Collector:
    def __init__(self, source, read_file=None):
        self.source = source or "<inline policy>"
        self.read_file = read_file
        self.errors = []
        self.warnings = []

    def error(self, path, message):
        self.errors.append("%s: %s: %s" % (self.source, path or "(top level)", message))

    def warn(self, path, message):
        self.warnings.append("%s: %s: %s" % (self.source, path or "(top level)", message))


def _join(path, key):
    if isinstance(key, int):
        return "%s[%d]" % (path, key)
    return "%s.%s" % (path, key) if path else key


def _check_keys(col, path, value, allowed):
    """Unknown keys are errors: a typo such as `deny_list` must not silently mean 'no rule'."""
    for key in value:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suffix = " (did you mean %r?)" % hint[0] if hint else " (allowed: %s)" % ", ".join(allowed)
            col.error(_join(path, key), "unknown field%s" % suffix)


def _expect(col, path, value, kind, kind_name):
    if isinstance(value, bool) and kind is not bool:
        col.error(path, "expected %s, got a boolean: %r" % (kind_name, value))
        return False
    if not isinstance(value, kind):
        col.error(path, "expected %s, got %s: %r" % (kind_name, type(value).__name__, value))
        return False
    return True


def _entry_location(entries, index, number):
    """The path of one list entry; `number` is the line of a list file (0: not from a file)."""
    entry_path = "[%d]" % index
    if number:
        return "%s (%s line %d)" % (entry_path, entries[index]["file"], number)
    return entry_path


def _list_file_lines(col, entry_path, name):
    """The text of a list file: one CIDR per line, '#' starts a comment (None if unreadable)."""
    if not isinstance(name, str) or not name.strip():
        col.error(entry_path + ".file", "expected a file path, got %r" % (name,))
        return None
    if col.read_file is None:
        col.error(entry_path + ".file", "list files are read on the controller by the policy action plugin; "
                                        "this caller cannot read %s" % name)
        return None
    try:
        return col.read_file(name)
    except (OSError, ValueError) as exc:
        col.error(entry_path + ".file", "cannot read list file %s: %s" % (name, exc))
        return None


def _parse_networks(col, path, entries):
    """Return sorted, de-duplicated (v4, v6) lists of prefix ints (_prefixes) from CIDR strings,
    {cidr, comment} or {file}.

    List files may hold a million lines: lines are parsed in one tight loop, duplicates are
    found by sorting, and the path of an entry is only built for a message.
    """
    v4, v6 = [], []
    if entries is None:
        return v4, v6, []
    if not _expect(col, path, entries, list, "a list of CIDRs"):
        return v4, v6, []
    texts = {}
    for index, entry in enumerate(entries):
        entry_path = _join(path, index)
        if isinstance(entry, dict) and "file" in entry:
            _check_keys(col, entry_path, entry, ("file",))
            text = _list_file_lines(col, entry_path, entry["file"])
            if text is None:
                continue
            texts[index] = text
            for number, _line, exc in _prefixes.parse_lines(text.splitlines(), v4, v6):
                col.error(path + _entry_location(entries, index, number), str(exc))
            continue
        if isinstance(entry, dict):
            _check_keys(col, entry_path, entry, ("cidr", "comment"))
            if "cidr" not in entry:
                col.error(entry_path, "missing required field 'cidr' (or 'file' for a list file)")
                continue
            comment = entry.get("comment")
            if comment is not None and not isinstance(comment, str):
                col.error(_join(entry_path, "comment"), "expected a string")
            entry = entry["cidr"]
        if not isinstance(entry, str) or isinstance(entry, bool):
            col.error(entry_path, "not an IP network: %r" % (entry,))
            continue
        try:
            version, value = _prefixes.parse(entry.strip())
        except _prefixes.PrefixError as exc:
            col.error(entry_path, str(exc))
            continue
        (v4 if version == 4 else v6).append(value)
    v4.sort()
    v6.sort()
    dup4, inside4 = _prefixes.scan(v4, 4)
    dup6, inside6 = _prefixes.scan(v6, 6)
    if dup4 or dup6:
        _report_duplicates(col, path, entries, texts, dup4 + dup6)
        v4 = _prefixes.unique(v4)
        v6 = _prefixes.unique(v6)
    text = _prefixes.to_text
    redundant = ["%s lies inside %s (redundant)" % (text(narrow, version), text(wide, version))
                 for version, pairs in ((4, inside4), (6, inside6)) for narrow, wide in pairs]
    return v4, v6, redundant


def _report_duplicates(col, path, entries, texts, repeated):
    """Warn about the first few duplicates (in the order the entries appear), naming the copy
    and its first occurrence. Runs only when there are duplicates, so it may parse again."""
    first_seen = {}
    reported = []

    def note(text, location):
        if len(reported) >= MAX_DUPLICATE_WARNINGS:
            return
        try:
            key = _prefixes.parse(text)
        except _prefixes.PrefixError:
            return
        first = first_seen.setdefault(key, location)
        if first != location:
            reported.append((location, first))

    for index, entry in enumerate(entries):
        if index in texts:
            for number, line in enumerate(texts[index].splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    note(line, path + _entry_location(entries, index, number))
            continue
        if isinstance(entry, dict):
            entry = entry.get("cidr")
        if isinstance(entry, str) and not isinstance(entry, bool):
            note(entry.strip(), _join(path, index))
    for later, first in reported:
        col.warn(later, "duplicate of %s" % first)
    if len(repeated) > len(reported):
        col.warn(path, "%d more duplicate entries" % (len(repeated) - len(reported)))


def _warn_limited(col, path, messages):
    for message in messages[:MAX_DUPLICATE_WARNINGS]:
        col.warn(path, message)
    if len(messages) > MAX_DUPLICATE_WARNINGS:
        col.warn(path, "%d more such entries" % (len(messages) - MAX_DUPLICATE_WARNINGS))


def _shadowed_denies(deny, allow):
    """Deny entries inside an allow entry never match: allow wins (docs/policy.md)."""
    text = _prefixes.to_text
    found = []
    for version, deny_values, allow_values in ((4, deny[0], allow[0]), (6, deny[1], allow[1])):
        for value, wider in _prefixes.shadowed(deny_values, allow_values, version):
            found.append("%s lies inside the allow entry %s, which wins: this deny entry never "
                         "matches" % (text(value, version), text(wider, version)))
    return found


def _number_match(pattern, value):
    """Match a whole number given as an int or as text (a bool is neither); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    if isinstance(value, int):
        return pattern.fullmatch(str(value)) if value >= 0 else None
    return pattern.fullmatch(value)


def _parse_port(col, path, value):
    """(low, high) from 23, "23" or "6000-6100"; None after reporting the problem."""
    match = _number_match(_PORT_RE, value)
    if not match:
        col.error(path, "must be a port (1-65535) or a range such as 6000-6100, got %r" % (value,))
        return None
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        col.error(path, "ports are 1-65535, got %r" % (value,))
        return None
    if low > high:
        col.error(path, "range %d-%d runs backwards (did you mean %d-%d?)" % (low, high, high, low))
        return None
    return low, high


def _rule_name(col, path, entry, default, taken):
    name = entry.get("name", default)
    if "name" in entry:
        if not isinstance(name, str) or not _RULE_NAME_RE.fullmatch(name):
            col.error(_join(path, "name"), "must be 1-32 characters of a-z, 0-9, '.', '-' and '_', starting "
                      "and ending with a letter or digit, got %r" % (name,))
            return default
        if name in RULE_IDS:
            col.error(_join(path, "name"), "%r is the name of a built-in rule" % name)
            return default
    if name in taken:
        col.error(_join(path, "name"), "%r already names %s" % (name, taken[name]))
    taken[name] = path
    return name


def _parse_match(col, path, entry, proto_key_path):
    """(proto, (low, high) or None) of a port rule or a rate-limit match."""
    proto = entry.get("proto", "any")
    if proto not in PORT_PROTOS:
        col.error(proto_key_path, "must be one of %s, got %r" % (", ".join(PORT_PROTOS), proto))
        proto = None
    ports = None
    if "port" in entry:
        if proto == "icmp":
            col.error(_join(path, "port"), "icmp has no ports: remove port, or use proto tcp, udp or any")
        else:
            ports = _parse_port(col, _join(path, "port"), entry["port"])
    return proto, ports


def _protocols(rule):
    """IP protocols a rule matches: `any` with a port means the protocols that have ports."""
    if rule["proto"] != "any":
        return {rule["proto"]}
    return {"tcp", "udp"} if rule["port_low"] else {"tcp", "udp", "icmp", "other"}


def _covers(first, later):
    """Does rule `first` match every packet that rule `later` matches?"""
    if first["direction"] != later["direction"] or not _protocols(later) <= _protocols(first):
        return False
    if not first["port_low"]:
        return True
    if not later["port_low"]:
        return False
    return first["port_low"] <= later["port_low"] and later["port_high"] <= first["port_high"]


def _validate_ports(col, raw, taken):
    rules = []
    if raw is None:
        return rules
    if not _expect(col, "filter.ports", raw, list, "a list of port rules"):
        return rules
    if len(raw) > MAX_PORT_RULES:
        col.error("filter.ports", "%d rules exceed the limit of %d" % (len(raw), MAX_PORT_RULES))
        return rules
    for index, entry in enumerate(raw):
        path = _join("filter.ports", index)
        if not _expect(col, path, entry, dict, "a mapping such as {proto: tcp, port: 23, action: drop}"):
            continue
        _check_keys(col, path, entry, _PORT_RULE_KEYS)
        ok = True
        for required in ("proto", "action"):
            if required not in entry:
                col.error(path, "missing required field %r" % required)
                ok = False
        proto, ports = _parse_match(col, path, entry, _join(path, "proto"))
        action = entry.get("action")
        if "action" in entry and action not in PORT_ACTIONS:
            col.error(_join(path, "action"), "must be one of %s, got %r" % (", ".join(PORT_ACTIONS), action))
            ok = False
        direction = entry.get("direction", "ingress")
        if direction not in PORT_DIRECTIONS:
            col.error(_join(path, "direction"), "must be ingress or egress, got %r" % (direction,))
            ok = False
        if "comment" in entry and not isinstance(entry["comment"], str):
            col.error(_join(path, "comment"), "expected a string")
        name = _rule_name(col, path, entry, "ports[%d]" % index, taken)
        if not ok or proto is None or ("port" in entry and ports is None):
            continue
        rule = {"id": PORT_RULE_FIRST_ID + index, "name": name, "path": path, "proto": proto,
                "port_low": ports[0] if ports else 0, "port_high": ports[1] if ports else 0,
                "direction": direction, "action": action}
        for earlier in rules:
            if earlier["action"] != "log" and _covers(earlier, rule):
                col.warn(path, "never matches: %s (%s) matches every packet it would" % (
                    earlier["path"], earlier["name"]))
                break
        rules.append(rule)
    for rule in rules:
        del rule["path"]
    return rules


def _parse_rate(col, path, value):
    match = _number_match(_RATE_RE, value)
    if not match:
        col.error(path, "must be packets per second such as 2000/s or 2000, got %r" % (value,))
        return None
    rate = int(match.group(1))
    if rate < 1:
        col.error(path, "a rate of 0 packets/s drops everything it matches: use a filter.ports drop rule")
        return None
    if rate > MAX_RATE_PPS:
        col.error(path, "%d packets/s per source is beyond any link (at most %d)" % (rate, MAX_RATE_PPS))
        return None
    return rate


_PORT_RULE_KEYS = tuple(POLICY_SCHEMA["properties"]["filter"]["properties"]["ports"]["items"]["properties"])
_RATE_LIMIT_KEYS = tuple(POLICY_SCHEMA["properties"]["filter"]["properties"]["rate_limit"]["items"]["properties"])
_RATE_MATCH_KEYS = tuple(
    POLICY_SCHEMA["properties"]["filter"]["properties"]["rate_limit"]["items"]["properties"]["match"]["properties"])


def _validate_rate_limits(col, raw, taken):
    limits = []
    if raw is None:
        return limits
    if not _expect(col, "filter.rate_limit", raw, list, "a list of rate limits"):
        return limits
    if len(raw) > MAX_RATE_LIMITS:
        col.error("filter.rate_limit", "%d rate limits exceed the limit of %d" % (len(raw), MAX_RATE_LIMITS))
        return limits
    for index, entry in enumerate(raw):
        path = _join("filter.rate_limit", index)
        if not _expect(col, path, entry, dict, "a mapping such as {per_source: 2000/s, burst: 4000}"):
            continue
        _check_keys(col, path, entry, _RATE_LIMIT_KEYS)
        name = _rule_name(col, path, entry, "rate_limit[%d]" % index, taken)
        match = entry.get("match", {})
        proto, ports, ok = "any", None, True
        if match is None:
            match = {}
        if _expect(col, _join(path, "match"), match, dict, "a mapping such as {proto: tcp, port: 80}"):
            match_path = _join(path, "match")
            _check_keys(col, match_path, match, _RATE_MATCH_KEYS)
            proto, ports = _parse_match(col, match_path, match, _join(match_path, "proto"))
            if proto is None or ("port" in match and ports is None):
                ok = False
        else:
            ok = False
        if "per_source" not in entry:
            col.error(path, "missing required field 'per_source' (packets per second, such as 2000/s)")
            rate = None
        else:
            rate = _parse_rate(col, _join(path, "per_source"), entry["per_source"])
        burst = entry.get("burst", rate)
        if "burst" in entry:
            if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
                col.error(_join(path, "burst"), "must be a whole number of packets from 1 to %d, got %r"
                          % (MAX_BURST, burst))
                burst = None
        if "comment" in entry and not isinstance(entry["comment"], str):
            col.error(_join(path, "comment"), "expected a string")
        if not ok or rate is None or burst is None:
            continue
        limits.append({"id": RATE_LIMIT_FIRST_ID + index, "name": name, "proto": proto,
                       "port_low": ports[0] if ports else 0, "port_high": ports[1] if ports else 0,
                       "rate": rate, "burst": burst})
    return limits


_REWRITE_KEYS = tuple(_rewrite.SCHEMA["items"]["properties"])
_REWRITE_MATCH_KEYS = tuple(_rewrite.SCHEMA["items"]["properties"]["match"]["properties"])


def _validate_rewrite_match(col, path, match):
    result = {"src": None, "dst": None, "proto": "any", "src_port": None, "dst_port": None}
    if match is None:
        return result
    if not _expect(col, path, match, dict, "a mapping such as {dst: 10.20.0.0/16, proto: udp}"):
        return None
    _check_keys(col, path, match, _REWRITE_MATCH_KEYS)
    ok = True
    for key in ("src", "dst"):
        if key in match:
            parsed = _rewrite.network(match[key])
            if parsed is None:
                col.error(_join(path, key), "not a network in CIDR form (host bits clear), got %r" % (match[key],))
                ok = False
            else:
                result[key] = str(parsed)
    if result["src"] and result["dst"] and _rewrite.network(result["src"]).version != _rewrite.network(
            result["dst"]).version:
        col.error(path, "src and dst are of different IP versions: no packet matches both")
        ok = False
    proto = match.get("proto", "any")
    if proto not in _rewrite.REWRITE_PROTOS:
        col.error(_join(path, "proto"), "must be one of %s, got %r" % (", ".join(_rewrite.REWRITE_PROTOS), proto))
        ok = False
    result["proto"] = proto
    for key in ("src_port", "dst_port"):
        if key in match:
            if proto == "icmp":
                col.error(_join(path, key), "icmp has no ports: remove %s, or use proto tcp, udp or any" % key)
                ok = False
                continue
            ports = _parse_port(col, _join(path, key), match[key])
            if ports is None:
                ok = False
            result[key] = list(ports) if ports else None
    return result if ok else None


def _validate_rewrite(col, raw, taken):
    rules = []
    if raw is None:
        return rules
    if not _expect(col, "rewrite", raw, list, "a list of rewrite rules"):
        return rules
    if len(raw) > _rewrite.MAX_REWRITE_RULES:
        col.error("rewrite", "%d rules exceed the limit of %d" % (len(raw), _rewrite.MAX_REWRITE_RULES))
        return rules
    for index, entry in enumerate(raw):
        path = _join("rewrite", index)
        if not _expect(col, path, entry, dict, "a mapping such as {direction: egress, dscp: ef}"):
            continue
        _check_keys(col, path, entry, _REWRITE_KEYS)
        name = _rule_name(col, path, entry, "rewrite[%d]" % index, taken)
        ok = True
        direction = entry.get("direction")
        if direction not in _rewrite.REWRITE_DIRECTIONS:
            col.error(_join(path, "direction") if "direction" in entry else path,
                      "must be ingress or egress, got %r" % (direction,) if "direction" in entry
                      else "missing required field 'direction' (ingress or egress)")
            ok = False
        match = _validate_rewrite_match(col, _join(path, "match"), entry.get("match"))
        ok = ok and match is not None
        vlan = None
        if "vlan" in entry:
            value = entry["vlan"]
            if value == "strip":
                vlan = {"strip": True, "push": 0, "pcp": 0}
            elif isinstance(value, dict):
                _check_keys(col, _join(path, "vlan"), value, ("push", "pcp"))
                vid, pcp = value.get("push"), value.get("pcp", 0)
                if isinstance(vid, bool) or not isinstance(vid, int) or not (
                        _rewrite.VLAN_ID_MIN <= vid <= _rewrite.VLAN_ID_MAX):
                    col.error(_join(_join(path, "vlan"), "push"), "a VLAN id is 1-4094, got %r" % (vid,))
                    ok = False
                if isinstance(pcp, bool) or not isinstance(pcp, int) or not 0 <= pcp <= _rewrite.PCP_MAX:
                    col.error(_join(_join(path, "vlan"), "pcp"), "a priority (PCP) is 0-7, got %r" % (pcp,))
                    ok = False
                if direction == "ingress":
                    col.error(_join(path, "vlan"), "a tag cannot be pushed on ingress: the stack has already "
                              "chosen the interface; push on egress, or strip on ingress")
                    ok = False
                vlan = {"strip": False, "push": vid, "pcp": pcp}
            else:
                col.error(_join(path, "vlan"), "must be strip or {push: VLAN id, pcp: priority}, got %r" % (value,))
                ok = False
        dscp = None
        if "dscp" in entry:
            dscp, why = _rewrite.parse_dscp(entry["dscp"])
            if why:
                col.error(_join(path, "dscp"), why)
                ok = False
        if "vlan" not in entry and "dscp" not in entry:
            col.error(path, "changes nothing: give vlan (strip or push) and/or dscp")
            ok = False
        if "comment" in entry and not isinstance(entry["comment"], str):
            col.error(_join(path, "comment"), "expected a string")
        if not ok:
            continue
        rule = {"id": _rewrite.REWRITE_FIRST_ID + index, "name": name, "direction": direction, "match": match,
                "vlan": vlan, "dscp": dscp}
        for earlier in rules:
            both = _rewrite.conflicts(earlier, rule)
            if both:
                col.error(path, "overlaps %s (%s): a packet could match both and both set %s" % (
                    "rewrite[%d]" % (earlier["id"] - _rewrite.REWRITE_FIRST_ID), earlier["name"],
                    " and ".join(both)))
                break
        rules.append(rule)
    return rules


def _validate_filter(col, raw):
    result = dict([("default", "allow")] + [(name, []) for name in _contract.LIST_MAPS] + [("ports", []),
                                                                                           ("rate_limit", [])])
    if raw is None:
        return result
    if not _expect(col, "filter", raw, dict, "a mapping"):
        return result
    _check_keys(col, "filter", raw, _keys("filter"))
    default = raw.get("default", "allow")
    if default not in FILTER_DEFAULTS:
        col.error("filter.default", "must be one of %s, got %r" % (", ".join(FILTER_DEFAULTS), default))
    else:
        result["default"] = default
    deny_v4, deny_v6, deny_redundant = _parse_networks(col, "filter.deny", raw.get("deny"))
    allow_v4, allow_v6, allow_redundant = _parse_networks(col, "filter.allow", raw.get("allow"))
    values = {"deny_v4": deny_v4, "deny_v6": deny_v6, "allow_v4": allow_v4, "allow_v6": allow_v6}
    limits = {"deny_v4": DENY_V4_MAX, "deny_v6": DENY_V6_MAX, "allow_v4": ALLOW_V4_MAX, "allow_v6": ALLOW_V6_MAX}
    for name, version, list_name in LIST_FAMILIES:
        if len(values[name]) > limits[name]:
            col.error("filter", "%d IPv%d %s entries exceed the map limit of %d" % (
                len(values[name]), version, list_name, limits[name]))
    _warn_limited(col, "filter.deny", deny_redundant)
    _warn_limited(col, "filter.allow", allow_redundant)
    _warn_limited(col, "filter.deny", _shadowed_denies((deny_v4, deny_v6), (allow_v4, allow_v6)))
    # The allow lists are the short ones: build the sets from them, scan the deny lists.
    both = sorted([(4, value) for value in set(allow_v4).intersection(deny_v4)]
                  + [(6, value) for value in set(allow_v6).intersection(deny_v6)])
    for network in sorted(_prefixes.to_text(value, version) for version, value in both):
        col.error("filter", "%s is in both filter.deny and filter.allow" % network)
    if default == "deny" and not (allow_v4 or allow_v6):
        col.warn("filter.default", "default deny with an empty allow list drops all IP traffic")
    # The parsed ints travel beside the model (Model.list_values) so rendering need not parse
    # a million texts again.
    result["_values"] = values
    for name, version, _list in LIST_FAMILIES:
        result[name] = _prefixes.texts(values[name], version)
    taken = {}
    result["ports"] = _validate_ports(col, raw.get("ports"), taken)
    result["rate_limit"] = _validate_rate_limits(col, raw.get("rate_limit"), taken)
    return result


def _parse_size(col, path, value):
    """Bytes from 1048576, "100M", "1G", "512k"."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if not match:
            col.error(path, "must be a size such as 104857600, 100M or 1G, got %r" % (value,))
            return None
        size = int(float(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()])
    if size < 4096:
        col.error(path, "%r is under 4 KiB: the log would rotate on almost every write" % (value,))
        return None
    return size


def _validate_match(col, raw):
    """log.match: a list of {proto, port, src_port, dst_port}; returns normalized rules with
    ports as [low, high] and proto as a name, a number or None."""
    rules = []
    if raw is None:
        return rules
    if not _expect(col, "log.match", raw, list, "a list of match rules such as {proto: tcp, port: 80}"):
        return rules
    if len(raw) > MAX_LOG_MATCH_RULES:
        col.error("log.match", "%d rules, at most %d (each is compiled into the kernel program)"
                  % (len(raw), MAX_LOG_MATCH_RULES))
    allowed = tuple(schema_node("log", "match")["items"]["properties"])
    for index, entry in enumerate(raw):
        path = _join("log.match", index)
        if not _expect(col, path, entry, dict, "a mapping such as {proto: tcp, port: 80}"):
            continue
        _check_keys(col, path, entry, allowed)
        if not entry:
            col.error(path, "an empty rule would match every packet: give proto and/or a port (or drop log.match)")
            continue
        rule = {"proto": None, "port": None, "src_port": None, "dst_port": None}
        if "proto" in entry:
            proto = entry["proto"]
            if proto in LOG_MATCH_PROTOS:
                rule["proto"] = proto
            elif isinstance(proto, int) and not isinstance(proto, bool) and 0 <= proto <= 255:
                rule["proto"] = {6: "tcp", 17: "udp"}.get(proto, proto)
            else:
                col.error(_join(path, "proto"), "must be one of %s or an IP protocol number 0-255, got %r"
                          % (", ".join(LOG_MATCH_PROTOS), proto))
                continue
        broken = False
        for key in MATCH_PORT_KEYS:
            if key in entry:
                ports = _parse_port(col, _join(path, key), entry[key])
                broken = broken or ports is None
                rule[key] = list(ports) if ports else None
        if broken:
            continue
        has_ports = any(key in entry for key in MATCH_PORT_KEYS)
        if has_ports and rule["proto"] not in (None, "tcp", "udp"):
            col.error(path, "ports only exist for tcp and udp, not for proto %r" % (entry["proto"],))
            continue
        if rule not in rules:
            rules.append(rule)
    # The rules are alternatives: their order means nothing, so it changes no digest.
    return sorted(rules, key=lambda rule: json.dumps(rule, sort_keys=True))


def _rule_logs_http_port(rule, port):
    """Whether a log.match rule lets a TCP request to `port` through."""
    if rule["proto"] not in (None, "tcp") or rule["src_port"] is not None:
        return False
    for key in ("port", "dst_port"):
        if rule[key] is not None and not rule[key][0] <= port <= rule[key][1]:
            return False
    return True


def _header_name_list(col, path, raw, what):
    """{lowercase name: its path} of a list of RFC 9110 tokens, without duplicates."""
    names = {}
    if raw is None:
        return names
    if not _expect(col, path, raw, list, "a list of %s" % what):
        return names
    for index, name in enumerate(raw):
        entry_path = _join(path, index)
        if not _http.is_token(name):
            col.error(entry_path, "%r is not a valid header name: an RFC 9110 token is letters, digits and "
                      "!#$%%&'*+-.^_`|~ only (no spaces, no ':')" % (name,))
            continue
        lowered = name.lower()
        if lowered in names:
            col.warn(entry_path, "%s is listed twice (names are compared in any case)" % name)
            continue
        names[lowered] = entry_path
    return names


def _validate_http(col, raw, match_rules):
    result = {"ports": list(_http.DEFAULT_PORTS), "headers": list(_http.DEFAULT_HEADERS), "redact": [],
              "redact_containing": [], "max_bytes": _http.DEFAULT_MAX_BYTES, "requests_only": False}
    if not _expect(col, "log.http", raw, dict,
                   "a mapping (ports, headers, redact, redact_containing, requests_only, max_bytes)"):
        return None
    _check_keys(col, "log.http", raw, _keys("log", "http"))
    if "ports" in raw:
        ports = raw["ports"]
        if _expect(col, "log.http.ports", ports, list, "a list of TCP ports"):
            chosen = []
            for index, port in enumerate(ports):
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    col.error(_join("log.http.ports", index), "%r is not a TCP port (1-65535)" % (port,))
                elif port in chosen:
                    col.warn(_join("log.http.ports", index), "port %d is listed twice" % port)
                else:
                    chosen.append(port)
            if not ports:
                col.error("log.http.ports", "must name at least one port (or drop log.http)")
            if len(chosen) > _http.MAX_PORTS:
                col.error("log.http.ports", "%d ports, at most %d (each is a comparison in the kernel)"
                          % (len(chosen), _http.MAX_PORTS))
            result["ports"] = sorted(chosen)
    headers = dict((name, "log.http.headers") for name in result["headers"])
    redact = {}
    if "headers" in raw:
        headers = _header_name_list(col, "log.http.headers", raw["headers"], "header names")
    if "redact" in raw:
        redact = _header_name_list(col, "log.http.redact", raw["redact"], "header names")
    # Order carries no meaning: sorted, so reordering the lists in git changes no digest.
    result["headers"] = sorted(headers)
    result["redact"] = sorted(redact)
    if "redact_containing" in raw:
        parts = raw["redact_containing"]
        if _expect(col, "log.http.redact_containing", parts, list, "a list of name parts such as session"):
            chosen = []
            for index, part in enumerate(parts):
                entry_path = _join("log.http.redact_containing", index)
                if not _http.is_token(part):
                    col.error(entry_path, "%r is not part of a header name: letters, digits and "
                              "!#$%%&'*+-.^_`|~ only" % (part,))
                elif not _http.MIN_SUBSTRING_LENGTH <= len(part) <= _http.MAX_SUBSTRING_LENGTH:
                    limits = (_http.MIN_SUBSTRING_LENGTH, _http.MAX_SUBSTRING_LENGTH)
                    col.error(entry_path, "%r has %d characters; %d to %d are allowed (a shorter part would blank "
                              "half of all headers)" % ((part, len(part)) + limits))
                elif part.lower() in chosen:
                    col.warn(entry_path, "%s is listed twice" % part)
                else:
                    chosen.append(part.lower())
            result["redact_containing"] = sorted(chosen)
    if "max_bytes" in raw:
        size = raw["max_bytes"]
        if (isinstance(size, bool) or not isinstance(size, int)
                or not _http.MIN_MAX_BYTES <= size <= _http.MAX_MAX_BYTES):
            col.error("log.http.max_bytes", "must be a whole number of bytes from %d to %d, got %r (the kernel "
                      "scans every captured byte; docs/logging-http.md has the cost)"
                      % (_http.MIN_MAX_BYTES, _http.MAX_MAX_BYTES, size))
        else:
            result["max_bytes"] = size
    if "requests_only" in raw:
        if isinstance(raw["requests_only"], bool):
            result["requests_only"] = raw["requests_only"]
        else:
            col.error("log.http.requests_only", "must be true or false, got %r" % (raw["requests_only"],))
    rules = _http.RedactionRules(result["redact"], result["redact_containing"])
    for name, path in sorted(headers.items()):
        if rules.is_sensitive(name):
            col.warn(path, "%s is redacted: records show it as %s" % (name, _http.REDACTED))
    default_rules = _http.RedactionRules()
    for name, path in sorted(redact.items()):
        if default_rules.is_sensitive(name):
            col.warn(path, "%s is redacted by default already" % name)
    if match_rules:
        for port in result["ports"]:
            if not any(_rule_logs_http_port(rule, port) for rule in match_rules):
                col.warn("log.http.ports", "log.match logs no TCP request to port %d: none will be captured" % port)
    return result


def _validate_log(col, raw):
    result = {
        "enabled": raw is not None,
        "fields": list(DEFAULT_LOG_FIELDS),
        "directions": list(LOG_DIRECTIONS),
        "sample": 1,
        "match": [],
        "http": None,
        "file": DEFAULT_LOG_FILE,
        "max_size": None,
        "keep": 5,
    }
    if raw is None:
        return result
    if not _expect(col, "log", raw, dict, "a mapping"):
        return result
    _check_keys(col, "log", raw, _keys("log"))
    enabled = raw.get("enabled", True)
    if _expect(col, "log.enabled", enabled, bool, "true or false"):
        result["enabled"] = enabled
    if "fields" in raw:
        fields = raw["fields"]
        if _expect(col, "log.fields", fields, list, "a list of field names"):
            chosen = []
            for index, field in enumerate(fields):
                if field not in LOG_FIELDS:
                    hint = difflib.get_close_matches(str(field), LOG_FIELDS, n=1)
                    col.error(_join("log.fields", index), "unknown field %r%s" % (
                        field, " (did you mean %r?)" % hint[0] if hint else ""))
                elif field not in chosen:
                    chosen.append(field)
            # Record order follows the schema, not the YAML, so reordering the list in git
            # does not change the digest.
            result["fields"] = [f for f in LOG_FIELDS if f in chosen]
    if "directions" in raw:
        directions = raw["directions"]
        if _expect(col, "log.directions", directions, list, "a list"):
            for index, direction in enumerate(directions):
                if direction not in LOG_DIRECTIONS:
                    col.error(_join("log.directions", index), "must be ingress or egress, got %r" % (direction,))
            result["directions"] = [d for d in LOG_DIRECTIONS if d in directions]
            if not result["directions"] and result["enabled"]:
                col.error("log.directions", "must name at least one direction (or set log.enabled: false)")
    if "sample" in raw:
        sample = raw["sample"]
        match = None
        if isinstance(sample, str):
            match = _SAMPLE_RE.fullmatch(sample)
        elif isinstance(sample, int) and not isinstance(sample, bool):
            match = _SAMPLE_RE.fullmatch("1/%d" % sample)
        if not match or not 1 <= int(match.group(1)) <= 1000000:
            col.error("log.sample", "must be '1/N' with N from 1 to 1000000, got %r" % (sample,))
        else:
            result["sample"] = int(match.group(1))
    if "match" in raw:
        result["match"] = _validate_match(col, raw["match"])
    if "http" in raw and raw["http"] is not None:
        result["http"] = _validate_http(col, raw["http"], result["match"])
    if "sink" in raw:
        sink = raw["sink"]
        if _expect(col, "log.sink", sink, dict, "a mapping"):
            _check_keys(col, "log.sink", sink, _keys("log", "sink"))
            path = sink.get("file", DEFAULT_LOG_FILE)
            try:
                # The same check the host's agent makes before it opens the file (docs/security.md).
                _safe_files.check_path(path, col.sink_dirs)
            except _safe_files.UnsafePath as exc:
                col.error("log.sink.file", str(exc))
            else:
                result["file"] = path
            if "max_size" in sink:
                result["max_size"] = _parse_size(col, "log.sink.max_size", sink["max_size"])
            if "keep" in sink:
                keep = sink["keep"]
                if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_SINK_KEEP:
                    col.error("log.sink.keep", "must be a whole number from 1 to %d, got %r" % (MAX_SINK_KEEP, keep))
                else:
                    result["keep"] = keep
    return result


def validate(raw, source=None, read_file=None, sink_dirs=None):
    """Validate a policy mapping; return (model, warnings) or raise PolicyError with all problems.

    `read_file(name) -> text` reads the list files a policy names (relative to the policy);
    without it a policy that names list files is an error. `sink_dirs`: the directories a
    log file may lie under (default /var/log/bpfleet, the host role's
    bpfleet_host_agent_sink_dirs).
    """
    col = _Collector(source, read_file)
    col.sink_dirs = sink_dirs
    if not isinstance(raw, dict):
        col.error("", "a policy must be a mapping, got %s" % type(raw).__name__)
        raise PolicyError(col.errors)
    _check_keys(col, "", raw, _keys())

    name = raw.get("name")
    if name is None:
        col.error("name", "missing required field")
    elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        col.error("name", "must be 1-48 characters of a-z, 0-9, '-' and '_', starting and ending with a letter "
                  "or digit, got %r" % (name,))

    interfaces = raw.get("interfaces")
    if interfaces == ALL_INTERFACES:
        interfaces = [ALL_INTERFACES]
    elif interfaces is None:
        col.error("interfaces", "missing required field (a list of interface names)")
        interfaces = []
    elif not isinstance(interfaces, list) or not interfaces:
        col.error("interfaces", "must be a non-empty list of interface names, got %r" % (interfaces,))
        interfaces = []
    for index, iface in enumerate(interfaces):
        if iface == ALL_INTERFACES and len(interfaces) > 1:
            col.error(_join("interfaces", index), "'all' stands alone: write interfaces: all")
        elif not isinstance(iface, str) or not _IFACE_RE.fullmatch(iface):
            col.error(_join("interfaces", index), "not a valid interface name: %r" % (iface,))
        elif iface == "lo":
            col.error(_join("interfaces", index), "the loopback interface cannot carry a bpfleet policy")
    if len(set(map(str, interfaces))) != len(interfaces):
        col.error("interfaces", "lists an interface more than once")

    xdp_mode = raw.get("xdp_mode", "auto")
    if xdp_mode not in XDP_MODES:
        col.error("xdp_mode", "must be one of %s, got %r" % (", ".join(XDP_MODES), xdp_mode))

    filter_model = _validate_filter(col, raw.get("filter"))
    names_taken = dict((rule["name"], "filter") for rule in filter_model["ports"] + filter_model["rate_limit"])
    rewrite_model = _validate_rewrite(col, raw.get("rewrite"), names_taken)
    log_model = _validate_log(col, raw.get("log"))
    if not log_model["enabled"]:
        for rule in filter_model["ports"]:
            if rule["action"] == "log":
                col.error("filter.ports[%d].action" % (rule["id"] - PORT_RULE_FIRST_ID),
                          "log needs header records: add a log section (or set log.enabled: true)")

    if col.errors:
        raise PolicyError(col.errors)
    list_values = filter_model.pop("_values", None)
    model = Model({
        "schema": SCHEMA_VERSION,
        "name": name,
        "interfaces": sorted(interfaces),
        "xdp_mode": xdp_mode,
        "filter": filter_model,
        "rewrite": rewrite_model,
        "log": log_model,
    })
    model.list_values = list_values
    return model, col.warnings


def rule_names(model=None):
    """Rule id -> name table shipped with the program (ids are in the records and counters)."""
    return dict((str(rule["id"]), rule["name"]) for rule in rule_details(model))


def rule_details(model=None):
    """Every rule of a policy with its id, kind and what it does; the facts report counters by it."""
    flt = (model or {}).get("filter") or {}
    default_action = "drop" if flt.get("default") == "deny" else "pass"
    rules = [
        {"id": RULE_IDS["default"], "name": "default", "kind": "default", "action": default_action},
        {"id": RULE_IDS["deny"], "name": "deny", "kind": "list", "action": "drop"},
        {"id": RULE_IDS["allow"], "name": "allow", "kind": "list", "action": "pass"},
    ]
    for rule in flt.get("ports") or []:
        rules.append({"id": rule["id"], "name": rule["name"], "kind": "port", "action": rule["action"],
                      "direction": rule["direction"]})
    for limit in flt.get("rate_limit") or []:
        rules.append({"id": limit["id"], "name": limit["name"], "kind": "rate_limit", "action": "rate_limited"})
    for rule in (model or {}).get("rewrite") or []:
        rules.append({"id": rule["id"], "name": rule["name"], "kind": "rewrite", "action": "rewrite",
                      "direction": rule["direction"]})
    return rules


class Model(dict):
    """A validated policy (plain JSON data) that also carries its lists as parsed prefix ints."""

    list_values = None


def list_values(model):
    """{map name: (family, sorted prefix ints, rule id)} of a model; parses the texts only when the
    model did not come straight from validate() (for example after a JSON round trip)."""
    cached = getattr(model, "list_values", None)
    found = {}
    for name, version, kind in LIST_FAMILIES:
        if cached is not None:
            values = cached[name]
        else:
            values = sorted(_prefixes.parse(text)[1] for text in model["filter"][name])
        found[name] = (version, values, RULE_IDS[kind])
    return found


def map_contents(model):
    """Desired content of the list maps: map name -> sorted list of [CIDR text, rule id]."""
    flt = model["filter"]
    return dict((name, [[cidr, RULE_IDS[kind]] for cidr in flt[name]]) for name, _version, kind in LIST_FAMILIES)


def digest_of(obj):
    """sha256 of a canonical JSON form: key order and formatting never change a digest."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()
