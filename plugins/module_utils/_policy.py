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
import ipaddress
import json
import re

SCHEMA_VERSION = 1

XDP_MODES = ("auto", "native", "generic")
FILTER_DEFAULTS = ("allow", "deny")
LOG_DIRECTIONS = ("ingress", "egress")

# Fields a header record can carry (DESIGN.md section 4). `ts`, `host`, `iface` and `dir`
# are always written; these are the ones a policy chooses.
LOG_FIELDS = (
    "action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip",
    "ttl", "len", "proto", "src_port", "dst_port", "tcp_flags",
)
DEFAULT_LOG_FIELDS = ("action", "rule", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "tcp_flags", "len")
DEFAULT_LOG_FILE = "/var/log/bpfleet/headers.jsonl"

# Map capacities. LPM tries are created with BPF_F_NO_PREALLOC, so a large limit costs no
# memory until entries exist, and a fixed limit keeps the pinned map's shape stable across
# policy edits (a shape change would force a new map and reset counters).
DENY_V4_MAX = 1048576
DENY_V6_MAX = 131072
ALLOW_V4_MAX = 65536
ALLOW_V6_MAX = 65536

# Rule ids are part of the kernel/user-space contract (docs/architecture.md).
RULE_IDS = {"default": 0, "deny": 1, "allow": 2}

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,46}[a-z0-9])?$")
# IFNAMSIZ is 16 including the NUL; '/' and whitespace are rejected by the kernel.
_IFACE_RE = re.compile(r"^[^/\s:]{1,15}$")
_SAMPLE_RE = re.compile(r"^\s*1\s*/\s*([0-9]+)\s*$")


class PolicyError(ValueError):
    """Raised with every problem found in a policy, each as 'file: path: message'."""

    def __init__(self, problems):
        self.problems = list(problems)
        super(PolicyError, self).__init__("\n".join(self.problems))


class _Collector:
    def __init__(self, source):
        self.source = source or "<inline policy>"
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


def _parse_networks(col, path, entries):
    """Return (v4, v6) lists of (network, comment) from CIDR strings or {cidr, comment} dicts."""
    v4, v6 = [], []
    if entries is None:
        return v4, v6
    if not _expect(col, path, entries, list, "a list of CIDRs"):
        return v4, v6
    seen = {}
    for index, entry in enumerate(entries):
        entry_path = _join(path, index)
        comment = None
        if isinstance(entry, dict):
            _check_keys(col, entry_path, entry, ("cidr", "comment"))
            if "cidr" not in entry:
                col.error(entry_path, "missing required field 'cidr'")
                continue
            comment = entry.get("comment")
            if comment is not None and not isinstance(comment, str):
                col.error(_join(entry_path, "comment"), "expected a string")
            entry = entry["cidr"]
        if not isinstance(entry, str) or isinstance(entry, bool):
            col.error(entry_path, "not an IP network: %r" % (entry,))
            continue
        text = entry.strip()
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            if "has host bits set" in str(exc):
                loose = ipaddress.ip_network(text, strict=False)
                col.error(entry_path, "host bits set in %s (did you mean %s?)" % (text, loose))
            else:
                col.error(entry_path, "not an IP network: %s" % text)
            continue
        if network in seen:
            col.warn(entry_path, "duplicate of %s" % _join(path, seen[network]))
            continue
        seen[network] = index
        (v4 if network.version == 4 else v6).append((network, comment))
    return v4, v6


def _sorted_networks(pairs):
    networks = [network for network, _comment in pairs]
    networks.sort(key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return [str(network) for network in networks]


def _validate_filter(col, raw):
    result = {"default": "allow", "deny_v4": [], "deny_v6": [], "allow_v4": [], "allow_v6": []}
    if raw is None:
        return result
    if not _expect(col, "filter", raw, dict, "a mapping"):
        return result
    _check_keys(col, "filter", raw, ("default", "deny", "allow"))
    default = raw.get("default", "allow")
    if default not in FILTER_DEFAULTS:
        col.error("filter.default", "must be one of %s, got %r" % (", ".join(FILTER_DEFAULTS), default))
    else:
        result["default"] = default
    deny_v4, deny_v6 = _parse_networks(col, "filter.deny", raw.get("deny"))
    allow_v4, allow_v6 = _parse_networks(col, "filter.allow", raw.get("allow"))
    for label, items, limit in (("IPv4 deny", deny_v4, DENY_V4_MAX), ("IPv6 deny", deny_v6, DENY_V6_MAX),
                                ("IPv4 allow", allow_v4, ALLOW_V4_MAX), ("IPv6 allow", allow_v6, ALLOW_V6_MAX)):
        if len(items) > limit:
            col.error("filter", "%d %s entries exceed the map limit of %d" % (len(items), label, limit))
    denied = set(network for network, _comment in deny_v4 + deny_v6)
    allowed = set(network for network, _comment in allow_v4 + allow_v6)
    both = denied & allowed
    for network in sorted(both, key=str):
        col.error("filter", "%s is in both filter.deny and filter.allow" % network)
    if default == "deny" and not (allow_v4 or allow_v6):
        col.warn("filter.default", "default deny with an empty allow list drops all IP traffic")
    result["deny_v4"] = _sorted_networks(deny_v4)
    result["deny_v6"] = _sorted_networks(deny_v6)
    result["allow_v4"] = _sorted_networks(allow_v4)
    result["allow_v6"] = _sorted_networks(allow_v6)
    return result


def _validate_log(col, raw):
    result = {
        "enabled": raw is not None,
        "fields": list(DEFAULT_LOG_FIELDS),
        "directions": list(LOG_DIRECTIONS),
        "sample": 1,
        "file": DEFAULT_LOG_FILE,
    }
    if raw is None:
        return result
    if not _expect(col, "log", raw, dict, "a mapping"):
        return result
    _check_keys(col, "log", raw, ("enabled", "fields", "directions", "sample", "sink"))
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
            if not result["directions"]:
                col.error("log.directions", "must name at least one direction (or set log.enabled: false)")
    if "sample" in raw:
        sample = raw["sample"]
        match = None
        if isinstance(sample, str):
            match = _SAMPLE_RE.match(sample)
        elif isinstance(sample, int) and not isinstance(sample, bool):
            match = _SAMPLE_RE.match("1/%d" % sample)
        if not match or not 1 <= int(match.group(1)) <= 1000000:
            col.error("log.sample", "must be '1/N' with N from 1 to 1000000, got %r" % (sample,))
        else:
            result["sample"] = int(match.group(1))
    if "sink" in raw:
        sink = raw["sink"]
        if _expect(col, "log.sink", sink, dict, "a mapping"):
            _check_keys(col, "log.sink", sink, ("file",))
            path = sink.get("file", DEFAULT_LOG_FILE)
            if not isinstance(path, str) or not path.startswith("/") or "\n" in path or path.endswith("/"):
                col.error("log.sink.file", "must be an absolute file path, got %r" % (path,))
            else:
                result["file"] = path
    return result


def validate(raw, source=None):
    """Validate a policy mapping; return (model, warnings) or raise PolicyError with all problems."""
    col = _Collector(source)
    if not isinstance(raw, dict):
        col.error("", "a policy must be a mapping, got %s" % type(raw).__name__)
        raise PolicyError(col.errors)
    _check_keys(col, "", raw, ("name", "interfaces", "xdp_mode", "filter", "log"))

    name = raw.get("name")
    if name is None:
        col.error("name", "missing required field")
    elif not isinstance(name, str) or not _NAME_RE.match(name):
        col.error("name", "must be 1-48 characters of a-z, 0-9, '-' and '_', starting and ending with a letter "
                  "or digit, got %r" % (name,))

    interfaces = raw.get("interfaces")
    if interfaces is None:
        col.error("interfaces", "missing required field (a list of interface names)")
        interfaces = []
    elif not isinstance(interfaces, list) or not interfaces:
        col.error("interfaces", "must be a non-empty list of interface names, got %r" % (interfaces,))
        interfaces = []
    for index, iface in enumerate(interfaces):
        if not isinstance(iface, str) or not _IFACE_RE.match(iface):
            col.error(_join("interfaces", index), "not a valid interface name: %r" % (iface,))
        elif iface == "lo":
            col.error(_join("interfaces", index), "the loopback interface cannot carry a bpfleet policy")
    if len(set(map(str, interfaces))) != len(interfaces):
        col.error("interfaces", "lists an interface more than once")

    xdp_mode = raw.get("xdp_mode", "auto")
    if xdp_mode not in XDP_MODES:
        col.error("xdp_mode", "must be one of %s, got %r" % (", ".join(XDP_MODES), xdp_mode))

    filter_model = _validate_filter(col, raw.get("filter"))
    log_model = _validate_log(col, raw.get("log"))

    if col.errors:
        raise PolicyError(col.errors)
    model = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "interfaces": sorted(interfaces),
        "xdp_mode": xdp_mode,
        "filter": filter_model,
        "log": log_model,
    }
    return model, col.warnings


def rule_names():
    """Rule id -> name table shipped with the program (ids are in the records)."""
    return dict((str(rule_id), name) for name, rule_id in RULE_IDS.items())


def map_contents(model):
    """Desired content of the list maps: map name -> sorted list of [CIDR text, rule id]."""
    flt = model["filter"]
    return {
        "deny_v4": [[cidr, RULE_IDS["deny"]] for cidr in flt["deny_v4"]],
        "deny_v6": [[cidr, RULE_IDS["deny"]] for cidr in flt["deny_v6"]],
        "allow_v4": [[cidr, RULE_IDS["allow"]] for cidr in flt["allow_v4"]],
        "allow_v6": [[cidr, RULE_IDS["allow"]] for cidr in flt["allow_v6"]],
    }


def digest_of(obj):
    """sha256 of a canonical JSON form: key order and formatting never change a digest."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()
