# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between the kernel programs and user space, written down once.

Map names, key and value layouts, map types and capacities, rule ids, actions, directions,
the slots of the `stats` array, the header record's layout and flags, and where pins and
records live on a host. The renderer writes the C side of it into every program
(c_defines(), the way xdp-tools keeps one common_kern_user.h and Cilium generates its
node_config.h); the host modules, the facts and bpfleet-agent import it. Nothing else
restates these facts: change them here (and docs/architecture.md), and the C follows.

Standard library only, Python 3.9+: it runs on the controller, in the modules on the hosts,
and as a plain sibling file beside bpfleet-agent (roles/host/tasks/agent.yml copies it).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

# ---- where things live on a host ----------------------------------------------------------

BPFFS_ROOT = "/sys/fs/bpf"
PIN_ROOT = BPFFS_ROOT + "/bpfleet"       # <PIN_ROOT>/<policy>/prog_*, <PIN_ROOT>/<policy>/maps/<map>
STATE_ROOT = "/var/lib/bpfleet"          # <STATE_ROOT>/<policy>/state.json and the other records
RUN_DIR = "/run/bpfleet"                 # the agent's status, pid file and cursors
STATE_SCHEMA = 1                         # state.json "schema"

# ---- kernel map types and flags (uapi/linux/bpf.h) ----------------------------------------

MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_RINGBUF = 27
BPF_F_NO_PREALLOC = 1

# ---- keys and values ----------------------------------------------------------------------

LPM_V4_KEY_SIZE = 8     # struct lpm_v4_key {u32 prefixlen; u8 addr[4];}  (prefixlen in host order)
LPM_V6_KEY_SIZE = 20    # struct lpm_v6_key {u32 prefixlen; u8 addr[16];}
LIST_VALUE_SIZE = 4     # u32 rule id stored with each prefix
COUNTER = struct.Struct("<QQ")   # struct counter {u64 packets; u64 bytes;}
RULE_KEY = struct.Struct("<II")  # struct rule_key {u32 ifindex; u32 rule;}
STAT_KEY = struct.Struct("<I")   # u32 slot of the `stats` array
RATE_KEY_SIZE = 24      # struct rate_key {u32 rule; u8 ip_ver; u8 pad[3]; u8 addr[16];}
RATE_BUCKET_SIZE = 16   # struct rate_bucket {u64 tokens; u64 last_ns;} (tokens in 1e-9 packets)

# ---- the list maps ------------------------------------------------------------------------

# Capacities. LPM tries are created with BPF_F_NO_PREALLOC, so a large limit costs no memory
# until entries exist, and a fixed limit keeps the pinned map's shape stable across policy
# edits (a shape change would force a new map and reset counters).
DENY_V4_MAX = 1048576
DENY_V6_MAX = 131072
ALLOW_V4_MAX = 65536
ALLOW_V6_MAX = 65536

LISTS = ("deny", "allow")
# (map name, address family, list): the order of the four list maps everywhere.
LIST_FAMILIES = (("deny_v4", 4, "deny"), ("deny_v6", 6, "deny"), ("allow_v4", 4, "allow"), ("allow_v6", 6, "allow"))
LIST_MAPS = tuple(name for name, _version, _list in LIST_FAMILIES)
LIST_MAX = {"deny_v4": DENY_V4_MAX, "deny_v6": DENY_V6_MAX, "allow_v4": ALLOW_V4_MAX, "allow_v6": ALLOW_V6_MAX}


def list_map(list_name, version):
    """The map of a list for an address family: list_map("deny", 4) == "deny_v4"."""
    return "%s_v%d" % (list_name, version)


def lpm_key_size(version):
    return LPM_V4_KEY_SIZE if version == 4 else LPM_V6_KEY_SIZE


# ---- the other maps -----------------------------------------------------------------------

STATS_SLOTS = 16
# (interface, rule) pairs: 64 interfaces of a policy times its up to 99 rules, with room.
RULE_STATS_ENTRIES = 16384
# Sources tracked by the rate limiter; the least recently seen bucket is evicted first.
RATE_BUCKETS_ENTRIES = 131072
RINGBUF_BYTES = 4 * 1024 * 1024


def map_specs():
    """The maps every program pins, with the shape a host verifies before reusing a pin."""
    lpm = [{"name": name, "type": MAP_TYPE_LPM_TRIE, "key_size": lpm_key_size(version),
            "value_size": LIST_VALUE_SIZE, "max_entries": LIST_MAX[name]}
           for name, version, _list in LIST_FAMILIES]
    return lpm + [
        {"name": "stats", "type": MAP_TYPE_PERCPU_ARRAY, "key_size": STAT_KEY.size, "value_size": COUNTER.size,
         "max_entries": STATS_SLOTS},
        {"name": "rule_stats", "type": MAP_TYPE_PERCPU_HASH, "key_size": RULE_KEY.size,
         "value_size": COUNTER.size, "max_entries": RULE_STATS_ENTRIES},
        {"name": "rate_buckets", "type": MAP_TYPE_LRU_HASH, "key_size": RATE_KEY_SIZE,
         "value_size": RATE_BUCKET_SIZE, "max_entries": RATE_BUCKETS_ENTRIES},
        {"name": "events", "type": MAP_TYPE_RINGBUF, "key_size": 0, "value_size": 0,
         "max_entries": RINGBUF_BYTES},
    ]


# ---- rule ids, actions, directions --------------------------------------------------------

# The lists have fixed ids; port rules and rate limits take theirs from their position in
# the policy. Names travel to user space in state.json ("rules", "rule_details").
RULE_DEFAULT = 0
RULE_DENY = 1
RULE_ALLOW = 2
RULE_IDS = {"default": RULE_DEFAULT, "deny": RULE_DENY, "allow": RULE_ALLOW}
PORT_RULE_FIRST_ID = 16
RATE_LIMIT_FIRST_ID = 128
RULE_NONE = 0xFFFF      # no filter rule decided (egress without a matching rule); null in JSON lines

ACTIONS = ("pass", "drop", "rate_limited")   # record.action: ACTION_PASS 0, ACTION_DROP 1, ...
ACTION_PASS, ACTION_DROP, ACTION_RATE_LIMITED = range(3)
DIRECTIONS = ("ingress", "egress")           # record.dir: DIR_INGRESS 0, DIR_EGRESS 1
DIR_INGRESS, DIR_EGRESS = range(2)

# ---- the `stats` per-CPU array ------------------------------------------------------------

STAT_SLOTS = ("xdp_seen", "xdp_passed", "xdp_dropped", "records_emitted", "records_lost",
              "tc_ingress_seen", "tc_egress_seen", "xdp_rate_limited", "tc_egress_dropped")
STAT_RECORDS_EMITTED = STAT_SLOTS.index("records_emitted")
STAT_RECORDS_LOST = STAT_SLOTS.index("records_lost")

# ---- header record v1 (docs/architecture.md) ----------------------------------------------

RECORD_FORMAT = "<QIIBBHHH6s6sBBBBHH16s16sHBBH6x"  # struct bpfleet_record, 88 bytes
RECORD_VERSION = 1
PAYLOAD_TRUNCATED = 0x01    # the end of the request headers is not in the payload
PAYLOAD_REDACTED = 0x02     # the kernel scanned the payload and blanked sensitive values
PAYLOAD_CUT = 0x04          # the segment had more bytes than log.http.max_bytes

# ---- the C side ---------------------------------------------------------------------------


def c_defines():
    """[(name, value text, comment)]: the #defines of this contract that the programs use
    (the renderer writes them before bpf/include/bpfleet_record.h)."""
    defines = [("BPFLEET_RECORD_VERSION", str(RECORD_VERSION), "record layout version")]
    defines += [("DIR_" + name.upper(), str(index), None) for index, name in enumerate(DIRECTIONS)]
    defines += [("ACTION_" + name.upper(), str(index), None) for index, name in enumerate(ACTIONS)]
    defines += [("RULE_" + name.upper(), str(rule), None) for name, rule in sorted(RULE_IDS.items(),
                                                                                   key=lambda item: item[1])]
    defines.append(("RULE_NONE", "0x%x" % RULE_NONE, "egress: no filter rule applies"))
    defines += [("PAYLOAD_TRUNCATED", "0x%02x" % PAYLOAD_TRUNCATED, "the end of the request headers is not in "
                 "the payload"),
                ("PAYLOAD_REDACTED", "0x%02x" % PAYLOAD_REDACTED, "the kernel blanked sensitive values"),
                ("PAYLOAD_CUT", "0x%02x" % PAYLOAD_CUT, "the segment had more bytes than HTTP_MAX_BYTES")]
    defines += [("STAT_" + name.upper(), str(slot), None) for slot, name in enumerate(STAT_SLOTS)]
    defines.append(("STAT_SLOTS", str(STATS_SLOTS), "size of the stats array"))
    return defines
