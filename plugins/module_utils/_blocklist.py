# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live edits of a running policy's deny and allow maps (bpfleet.core.blocklist).

The controller half (parse_entries) validates the entries and packs them (_packing); the host
half (Edit) decides from the live maps what changes, checks the lockout guard, then writes
the maps and the live edits record (_live_edits) that later `policy` runs lay over the
policy's own lists. No compile, no program change: a map update per family.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _classifier, _packing, _prefixes
from ansible_collections.bpfleet.core.plugins.module_utils import _contract as contract
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils import _live_edits as live_edits
from ansible_collections.bpfleet.core.plugins.module_utils import _maps as maps

LISTS = contract.LISTS
MAX_ERRORS = 20


class BlocklistFailure(Exception):
    def __init__(self, message, **details):
        self.details = details
        super(BlocklistFailure, self).__init__(message)


def parse_entries(entries, file_name=None, read_file=None):
    """(v4, v6, errors): sorted unique prefix ints of `entries` (CIDR texts) and of the list file
    `file_name` (read with `read_file`), and path-bearing messages for every bad one."""
    v4, v6, errors = [], [], []
    if entries is not None and not isinstance(entries, list):
        errors.append("entries: expected a list of CIDRs, got %s" % type(entries).__name__)
        entries = []
    for index, entry in enumerate(entries or []):
        if not isinstance(entry, str) or isinstance(entry, bool):
            errors.append("entries[%d]: not an IP network: %r" % (index, entry))
            continue
        try:
            version, value = _prefixes.parse(entry.strip())
        except _prefixes.PrefixError as exc:
            errors.append("entries[%d]: %s" % (index, exc))
            continue
        (v4 if version == 4 else v6).append(value)
    if file_name is not None:
        try:
            text = read_file(file_name)
        except (OSError, ValueError) as exc:
            errors.append("file: cannot read list file %s: %s" % (file_name, exc))
        else:
            for number, _line, exc in _prefixes.parse_lines(text.splitlines(), v4, v6):
                errors.append("file (%s line %d): %s" % (file_name, number, exc))
    if len(errors) > MAX_ERRORS:
        errors = errors[:MAX_ERRORS] + ["... and %d more problems" % (len(errors) - MAX_ERRORS)]
    return _prefixes.unique(sorted(v4)), _prefixes.unique(sorted(v6)), errors


def pack_entries(list_name, v4, v6):
    """The module's `packed` argument: {"v4": packed, "v6": packed} (_packing)."""
    rule = contract.RULE_IDS[list_name]
    return {"v4": _packing.pack(v4, 4, rule), "v6": _packing.pack(v6, 6, rule)}


def _covered(keys, version, address):
    """The longest key of `keys` (LPM keys) containing `address` (an int), or None."""
    found = _packing.KeySet(version, keys).matches(address)
    return _packing.lpm_key(version, found[-1][0], found[-1][1]) if found else None


class Edit:
    """One blocklist task on one host: which keys to add or delete, decided without side effects."""

    def __init__(self, policy, list_name, state, packed):
        self.policy = policy
        self.list_name = list_name
        self.state = state
        self.policy_state = paths.read_json(paths.state_file(policy))
        if not self.policy_state:
            raise BlocklistFailure("policy %r is not applied on this host (no %s): apply it with "
                                   "bpfleet.core.policy first" % (policy, paths.state_file(policy)))
        self.entries = {}
        for family, version in (("v4", 4), ("v6", 6)):
            self.entries[version] = _packing.PackedList.from_transfer(packed[family], "%s entries" % family)
        self.specs = dict((spec["name"], spec) for spec in contract.map_specs())
        self.live = {}
        self.upsert = {}
        self.remove = {}

    def _live_keys(self, map_name):
        if map_name not in self.live:
            fd = maps.open_pinned(paths.map_pin(self.policy, map_name))
            if fd is None:
                raise BlocklistFailure("policy %r has no pinned map %s on this host: run bpfleet.core.policy to "
                                       "repair it" % (self.policy, map_name))
            try:
                info = bpf.map_info(fd)
                keys, _values = maps.live_keys(fd, self.specs[map_name]["key_size"], contract.LIST_VALUE_SIZE)
            finally:
                os.close(fd)
            self.live[map_name] = (set(keys), info["max_entries"])
        return self.live[map_name][0]

    def plan(self):
        for version in (4, 6):
            packed = self.entries[version]
            if not packed.count:
                continue
            map_name = contract.list_map(self.list_name, version)
            live = self._live_keys(map_name)
            wanted = packed.key_list()
            if self.state == "present":
                self.upsert[map_name] = maps.Upsert(key for key in wanted if key not in live)
                self.upsert[map_name].value = packed.value()
                self.upsert[map_name].ordered = True
                limit = self.live[map_name][1]
                if len(live) + len(self.upsert[map_name]) > limit:
                    raise BlocklistFailure(
                        "%s would hold %d entries, more than its limit of %d; nothing was changed" % (
                            map_name, len(live) + len(self.upsert[map_name]), limit))
            else:
                self.remove[map_name] = [key for key in wanted if key in live]
        return self

    @property
    def changed(self):
        return any(self.upsert.values()) or any(self.remove.values())

    def _filter_section(self):
        """The applied policy's filter (default, port rules, rate limits) from the rendered policy
        recorded in applied.json (_history); state.json alone has the default's action only."""
        applied = paths.read_json(paths.applied_file(self.policy)) or {}
        if applied.get("filter"):
            return applied["filter"]
        default = next((rule for rule in self.policy_state.get("rule_details") or []
                        if rule.get("kind") == "default"), {})
        return {"default": "deny" if default.get("action") == "drop" else "allow", "ports": [], "rate_limit": []}

    def _after(self, version):
        """{map name: KeySet} of the address family's list maps as this edit leaves them."""
        lists = {}
        for list_name in LISTS:
            map_name = contract.list_map(list_name, version)
            keys = set(self._live_keys(map_name))
            keys.difference_update(self.remove.get(map_name) or ())
            keys.update(self.upsert.get(map_name) or ())
            lists[map_name] = _packing.KeySet(version, keys)
        return lists

    def lockout(self, address, port=_classifier.SSH_PORT):
        """(dropped after the edit, reason) for the controller's SSH packets (from `address` to TCP
        `port`), as the XDP program would decide them (_classifier); None when this edit cannot cut
        it off (it neither denies more nor allows less)."""
        if address is None:
            return None
        version = address.version
        number = int(address)
        allow_map = contract.list_map("allow", version)
        deny_map = contract.list_map("deny", version)
        if self.list_name == "deny" and self.state == "present" and self.upsert.get(deny_map):
            added = _covered(self.upsert[deny_map], version, number)
            if added is None:
                return False, "the entries added do not contain it"
        elif self.list_name == "allow" and self.state == "absent" and self.remove.get(allow_map):
            remaining = self._live_keys(allow_map).difference(self.remove[allow_map])
            if _covered(remaining, version, number) is not None:
                return False, "another allow entry still contains it"
            removed = _covered(self.remove[allow_map], version, number)
            if removed is None:
                return False, "the entries removed do not contain it"
        else:
            return None
        packet = _classifier.Packet.tcp(address, port)
        after = _classifier.classify(packet, self._filter_section(), self._after(version))
        if self.list_name == "deny":
            if after.kind == "allow":
                return False, "allowed by the allow entry %s" % after.entry
            return after.dropped, "the deny entry %s contains it" % live_edits.text_of(deny_map, added)
        left_to = "removing the allow entry %s leaves it to" % live_edits.text_of(allow_map, removed)
        if after.kind == "deny":
            return True, "%s the deny entry %s" % (left_to, after.entry)
        if after.kind == "port":
            return after.dropped, "%s port rule %s, which %s %s" % (
                left_to, after.port_rule["name"], "drops" if after.dropped else "passes", packet.describe())
        if after.dropped:
            return True, "%s filter.default deny" % left_to
        return False, "no deny entry contains it and filter.default is allow"

    def apply(self):
        """Write the maps, then the record (a crash in between leaves a map edit the next
        policy run reverts, never a record of an edit that did not happen)."""
        for map_name, keys in sorted(self.upsert.items()):
            if keys:
                fd = bpf.obj_get(paths.map_pin(self.policy, map_name))
                try:
                    maps.apply_delta(fd, keys, [])
                finally:
                    os.close(fd)
        for map_name, keys in sorted(self.remove.items()):
            if keys:
                fd = bpf.obj_get(paths.map_pin(self.policy, map_name))
                try:
                    bpf.map_delete_batch(fd, keys)
                finally:
                    os.close(fd)
        edits = live_edits.read(self.policy)
        for map_name, keys in self.upsert.items():
            for key in keys:
                if key in edits[map_name]["removed"]:
                    edits[map_name]["removed"].discard(key)
                else:
                    edits[map_name]["added"].add(key)
        for map_name, keys in self.remove.items():
            for key in keys:
                if key in edits[map_name]["added"]:
                    edits[map_name]["added"].discard(key)
                else:
                    edits[map_name]["removed"].add(key)
        live_edits.write(self.policy, edits)

    def changes(self, limit=5):
        found = []
        for map_name in sorted(set(self.upsert) | set(self.remove)):
            upsert = self.upsert.get(map_name) or []
            remove = self.remove.get(map_name) or []
            if upsert or remove:
                found.append(maps.describe_delta(map_name, upsert, remove, limit))
        return found
