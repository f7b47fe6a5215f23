# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live list edits: entries the blocklist module added to or removed from the running maps.

They are recorded beside the policy's state (/var/lib/bpfleet/<policy>/live_edits.json) so a
later `policy` run can lay them over the policy's own lists (live_edits: keep) instead of
reverting them, or drop them on purpose (live_edits: discard). The record holds CIDR texts so
an operator can read it; the entries are few compared with the lists, so parsing them is cheap.

Rules, with P the policy's entries of a list, A the recorded additions, R the removals:
  the map holds (P - R) | A;
  a policy run prunes A of what P now holds (the policy took the entry over) and R of what P
  no longer holds (nothing left to remove), so a later policy edit acts as written.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import heapq
import json
import os

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _packing, _prefixes
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths

SCHEMA = 1
LIST_MAPS = _contract.LIST_MAPS


def record_file(name):
    return os.path.join(paths.state_dir(name), "live_edits.json")


_VERSIONS = dict((name, version) for name, version, _list in _contract.LIST_FAMILIES)


def _version(map_name):
    return _VERSIONS[map_name]


def key_of(map_name, text):
    version, value = _prefixes.parse(text)
    if version != _version(map_name):
        raise ValueError("%s is not an IPv%d prefix" % (text, _version(map_name)))
    return _packing.lpm_key(version, value >> 8, value & 0xFF)


def text_of(map_name, key):
    network, length = _packing.key_parts(key)
    version = _version(map_name)
    return _prefixes.to_text(network << 8 | length, version)


def empty():
    return dict((map_name, {"added": set(), "removed": set()}) for map_name in LIST_MAPS)


def read(name):
    """{map name: {"added": set of LPM keys, "removed": set of LPM keys}} (empty sets when none)."""
    edits = empty()
    document = paths.read_json(record_file(name)) or {}
    for map_name, entry in (document.get("lists") or {}).items():
        if map_name in edits:
            for kind in ("added", "removed"):
                edits[map_name][kind] = set(key_of(map_name, text) for text in entry.get(kind) or [])
    return edits


def is_empty(edits):
    return not any(entry["added"] or entry["removed"] for entry in edits.values())


def document_of(edits):
    lists = {}
    for map_name in LIST_MAPS:
        entry = edits[map_name]
        if entry["added"] or entry["removed"]:
            lists[map_name] = dict((kind, sorted((text_of(map_name, key) for key in entry[kind]),
                                                 key=lambda text: _prefixes.parse(text)[1]))
                                   for kind in ("added", "removed"))
    return {"schema": SCHEMA, "lists": lists}


def write(name, edits):
    """Record the edits; an empty record removes the file."""
    path = record_file(name)
    if is_empty(edits):
        if os.path.exists(path):
            os.unlink(path)
        return
    paths.write_atomic(path, json.dumps(document_of(edits), indent=1, sort_keys=True) + "\n")


def counts(name):
    """{map name: {"added": n, "removed": m}} for the facts, from the record alone."""
    document = paths.read_json(record_file(name)) or {}
    found = {}
    for map_name in LIST_MAPS:
        entry = (document.get("lists") or {}).get(map_name) or {}
        found[map_name] = {"added": len(entry.get("added") or []), "removed": len(entry.get("removed") or [])}
    return found


def overlay(policy_keys, edits_of_map):
    """(desired keys in order, pruned edits) for one list map: (P - R) | A, with A and R pruned."""
    if not edits_of_map["added"] and not edits_of_map["removed"]:
        return policy_keys, {"added": set(), "removed": set()}
    policy_set = set(policy_keys)
    added = set(key for key in edits_of_map["added"] if key not in policy_set)
    removed = set(key for key in edits_of_map["removed"] if key in policy_set)
    desired = [key for key in policy_keys if key not in removed] if removed else list(policy_keys)
    if added:
        # Keep address order: the kernel inserts sorted keys faster, and samples come first.
        order = _packing.key_order
        desired = list(heapq.merge(desired, sorted(added, key=order), key=order))
    return desired, {"added": added, "removed": removed}
