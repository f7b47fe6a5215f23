# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-CPU counters of a policy's pinned maps, summed over CPUs.

One reader for the facts (`_maps.read_counters`) and for bpfleet-agent's metrics, so the two
can never disagree on the layout of `stats` and `rule_stats` (_contract).
"""

from __future__ import annotations

try:
    from . import _bpf_syscall, _contract
except ImportError:
    # The agent runs copies of these files as plain sibling modules.
    import _bpf_syscall
    import _contract

COUNTER = _contract.COUNTER
RULE_KEY = _contract.RULE_KEY
_SLOT = _contract.STAT_KEY

# Slots of the `stats` per-CPU array.
STAT_SLOTS = _contract.STAT_SLOTS
STAT_RECORDS_EMITTED = _contract.STAT_RECORDS_EMITTED
STAT_RECORDS_LOST = _contract.STAT_RECORDS_LOST


def _summed(values):
    packets = byte_count = 0
    for value in values or []:
        count_packets, count_bytes = COUNTER.unpack_from(value)
        packets += count_packets
        byte_count += count_bytes
    return packets, byte_count


def read_slot(stats_fd, slot):
    """(packets, bytes) of one slot of the `stats` array."""
    return _summed(_bpf_syscall.percpu_lookup(stats_fd, _SLOT.pack(slot), COUNTER.size))


def read_rule_counters(rules_fd):
    """{(ifindex, rule id): (packets, bytes)} from the `rule_stats` per-CPU hash."""
    found = {}
    for key in _bpf_syscall.map_keys(rules_fd, RULE_KEY.size):
        found[RULE_KEY.unpack(bytes(key))] = _summed(_bpf_syscall.percpu_lookup(rules_fd, bytes(key), COUNTER.size))
    return found
