# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Map contents: encoding of list entries, live reads, deltas, counters.

List maps are changed by delta only (entries added and entries removed). Rebuilding a trie
of a million prefixes would free and reallocate every node, and counters in other maps must
not notice a list edit at all.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import heapq
import ipaddress
import os
import struct

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _counters, _packing
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths

_U32 = struct.Struct("<I")
STAT_SLOTS = _contract.STAT_SLOTS
LIST_MAPS = _contract.LIST_MAPS


def encode_lpm_key(cidr):
    """struct lpm_v4_key / lpm_v6_key: u32 prefix length (host order) + address bytes."""
    network = ipaddress.ip_network(cidr, strict=True)
    return _U32.pack(network.prefixlen) + network.network_address.packed


def decode_lpm_key(key):
    prefixlen = _U32.unpack_from(key)[0]
    address = ipaddress.ip_address(bytes(key[4:]))
    return "%s/%d" % (address, prefixlen)


def encode_value(rule_id):
    return _U32.pack(rule_id)


def desired_entries(entries):
    """[[cidr, rule id], ...] -> {key bytes: value bytes}."""
    return dict((encode_lpm_key(cidr), encode_value(rule_id)) for cidr, rule_id in entries)


def live_entries(fd, key_size, value_size=4):
    """{key bytes: value bytes} of a map, read with batch lookups where the kernel has them."""
    keys, values = live_keys(fd, key_size, value_size)
    return dict(zip(keys, [values[i * value_size:(i + 1) * value_size] for i in range(len(keys))]))


def live_keys(fd, key_size, value_size=4):
    """([key bytes, ...], packed values) of a map: the cheap form for a million entries."""
    keys, values, count = bpf.map_read_all(fd, key_size, value_size)
    return [keys[start:start + key_size] for start in range(0, count * key_size, key_size)], values


class Upsert(list):
    """LPM keys to write, all with one value (`value`): a list map holds one rule id.

    `ordered` says the keys are in address order: the kernel inserts a million sorted keys
    into a trie about three times faster than shuffled ones (cache locality), and the first
    few are then the sample a result shows.
    """

    value = None
    ordered = False


def delta(live, desired, value=None):
    """(to_upsert, to_delete): entries missing or with another value, and entries not wanted.

    Either `live` and `desired` are {key: value} dicts, or `live` is live_keys()'s
    (keys, packed values) and `desired` a list of keys in address order that all take `value`:
    the form for lists of a million entries, where the comparison is a few set operations.
    """
    if isinstance(desired, dict):
        upsert = dict((k, v) for k, v in desired.items() if live.get(k) != v)
        remove = [k for k in live if k not in desired]
        return upsert, remove
    keys, values = live
    if keys:
        present = set(keys)
        upsert = Upsert(key for key in desired if key not in present)
    else:
        upsert = Upsert(desired)
    upsert.value = value
    upsert.ordered = True
    if values != value * len(keys):
        size = len(value)
        wanted = set(desired)
        wrong = [key for index, key in enumerate(keys)
                 if key in wanted and values[index * size:(index + 1) * size] != value]
        if wrong:
            upsert.extend(wrong)
            upsert.ordered = False
    remove = []
    if len(keys) + len(upsert) != len(desired):
        remove = sorted(set(keys).difference(desired), key=_key_order)
    return upsert, remove


def apply_delta(fd, upsert, remove):
    if upsert:
        if isinstance(upsert, Upsert):
            key_size = len(upsert[0])
            bpf.map_update_batch_packed(fd, b"".join(upsert), upsert.value * len(upsert), key_size,
                                        len(upsert.value))
        else:
            keys = list(upsert)
            bpf.map_update_batch(fd, keys, [upsert[k] for k in keys])
    if remove:
        bpf.map_delete_batch(fd, remove)


def write_order(map_deltas):
    """[(map name, upsert, remove)] in the order that neither drops a source the old and the new
    lists both pass nor lets through one they both deny, while the programs read the maps:

    1. new allow entries;
    2. deny removals that no new deny entry overlaps (they free room first: a trie near its
       capacity could not take a different list of its own size otherwise);
    3. new deny entries;
    4. deny removals that a new deny entry overlaps (10.0.0.0/24 replaced by 10.0.0.0/16:
       the /24 goes only once the /16 is there);
    5. allow removals.
    """
    steps = []
    empty = []
    for map_name in sorted(name for name in map_deltas if name.startswith("allow_")):
        if map_deltas[map_name][0]:
            steps.append((map_name, map_deltas[map_name][0], empty))
    late = []
    for map_name in sorted(name for name in map_deltas if name.startswith("deny_")):
        upsert, remove = map_deltas[map_name]
        free_first, after_upsert = split_removals(upsert, remove)
        if free_first:
            steps.append((map_name, empty, free_first))
        if upsert:
            late.append((map_name, upsert, empty))
        if after_upsert:
            late.append((map_name, empty, after_upsert))
    steps.extend(late)
    for map_name in sorted(name for name in map_deltas if name.startswith("allow_")):
        if map_deltas[map_name][1]:
            steps.append((map_name, empty, map_deltas[map_name][1]))
    return steps


def _interval(key):
    """[first, last] address (as ints) that an LPM key covers."""
    address, prefixlen = _packing.key_parts(key)
    host_bits = (len(key) - 4) * 8 - prefixlen
    return address, address | ((1 << host_bits) - 1)


def split_removals(upsert, remove):
    """(removals no upserted prefix overlaps, removals one does), each in the given order.

    Prefixes are nested or disjoint, so a removal overlaps the upserts exactly when it meets
    the union of their address intervals; that union, merged and sorted, answers each removal
    with one bisection."""
    if not remove:
        return [], []
    if not upsert:
        return list(remove), []
    starts, ends = [], []
    for first, last in sorted(_interval(key) for key in upsert):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    free_first, after_upsert = [], []
    for key in remove:
        first, last = _interval(key)
        index = bisect.bisect_right(starts, last) - 1
        if index >= 0 and ends[index] >= first:
            after_upsert.append(key)
        else:
            free_first.append(key)
    return free_first, after_upsert


_key_order = _packing.key_order


def sample_texts(keys, limit):
    """The first `limit` entries (in address order) of a possibly huge collection of LPM keys,
    as CIDR texts: only those are decoded."""
    if getattr(keys, "ordered", False):
        first = keys[:limit]
    else:
        first = heapq.nsmallest(limit, keys, key=_key_order)
    return [decode_lpm_key(key) for key in first]


def describe_delta(map_name, upsert, remove, limit=5):
    """A short human summary for diffs and results: counts plus the first few entries."""
    return {
        "map": map_name,
        "added": len(upsert),
        "removed": len(remove),
        "added_sample": sample_texts(upsert, limit),
        "removed_sample": sample_texts(remove, limit),
    }


def open_pinned(path):
    try:
        return bpf.obj_get(path)
    except OSError:
        return None


def pinned_prog_info(path):
    """prog_info() of a pinned program, or None when nothing is pinned there."""
    fd = open_pinned(path)
    if fd is None:
        return None
    try:
        return bpf.prog_info(fd)
    finally:
        os.close(fd)


def read_counters(name, rules, ifnames=None):
    """Live counters from the pinned per-CPU maps of a policy; None when not pinned.

    `rules` maps rule id -> name (state.json); `ifnames` maps ifindex -> interface name.
    Per-rule counters are kept per interface in the kernel; `rules` sums them and
    `interfaces` keeps them apart.
    """
    stats_fd = open_pinned(paths.map_pin(name, "stats"))
    if stats_fd is None:
        return None
    try:
        counters = {}
        for slot, label in enumerate(STAT_SLOTS):
            packets, byte_count = _counters.read_slot(stats_fd, slot)
            counters[label] = packets
            if label in ("xdp_seen", "xdp_passed", "xdp_dropped"):
                counters[label + "_bytes"] = byte_count
    finally:
        os.close(stats_fd)
    rule_counters = dict((rule_name, {"id": int(rule_id), "packets": 0, "bytes": 0})
                         for rule_id, rule_name in rules.items())
    by_interface = {}
    rules_fd = open_pinned(paths.map_pin(name, "rule_stats"))
    if rules_fd is not None:
        try:
            live = _counters.read_rule_counters(rules_fd)
        except OSError:
            live = {}  # a rule_stats map of an older layout: the next policy run recreates it
        finally:
            os.close(rules_fd)
        for (ifindex, rule_id), (packets, byte_count) in sorted(live.items()):
            rule_name = rules.get(str(rule_id), str(rule_id))
            total = rule_counters.setdefault(rule_name, {"id": rule_id, "packets": 0, "bytes": 0})
            total["packets"] += packets
            total["bytes"] += byte_count
            iface = (ifnames or {}).get(ifindex, "ifindex %d" % ifindex)
            per_iface = by_interface.setdefault(iface, {"rules": {}})
            per_iface["rules"][rule_name] = {"packets": packets, "bytes": byte_count}
    counters["packets_seen"] = counters["xdp_seen"]
    counters["passed"] = counters["xdp_passed"]
    counters["dropped"] = counters["xdp_dropped"]
    counters["rate_limited"] = counters["xdp_rate_limited"]
    counters["rules"] = rule_counters
    counters["interfaces"] = by_interface
    return counters
