# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-CPU counters of a policy's pinned maps, summed over CPUs.

One reader for the facts (`_maps.read_counters`) and for bpfleet-agent's metrics, so the two
can never disagree on the layout of `stats` and `rule_stats` (bpf/include/bpfleet_record.h).
"""

from __future__ import annotations

import struct

try:
    from . import _bpf_syscall
except ImportError:
    # The agent runs copies of these files as plain sibling modules.
    import _bpf_syscall

COUNTER = struct.Struct("<QQ")   # struct counter {u64 packets; u64 bytes;}
RULE_KEY = struct.Struct("<II")  # struct rule_key {u32 ifindex; u32 rule;}
_SLOT = struct.Struct("<I")

# Slots of the `stats` per-CPU array.
STAT_SLOTS = ("xdp_seen", "xdp_passed", "xdp_dropped", "records_emitted", "records_lost",
              "tc_ingress_seen", "tc_egress_seen", "xdp_rate_limited", "tc_egress_dropped")
STAT_RECORDS_EMITTED = STAT_SLOTS.index("records_emitted")
STAT_RECORDS_LOST = STAT_SLOTS.index("records_lost")


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
