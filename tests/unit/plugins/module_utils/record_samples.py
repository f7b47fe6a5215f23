# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A typical header record v1 and the names around it, shared by the record decoder's and the
line encoder's tests (pytest puts this directory on sys.path)."""

import socket

from ansible_collections.bpfleet.core.plugins.module_utils import _records

# 2026-11-23T17:00:00Z as UNIX seconds, and a boot time offset that lands records on it.
WALL_SECOND = 1795453200
BOOT_NS = 5_000_000_000
OFFSET_NS = WALL_SECOND * 1_000_000_000 - BOOT_NS

ALL_FIELDS = list(_records.OPTIONAL_FIELDS)
RULES = {"0": "default", "1": "deny", "2": "allow"}
IFACES = {2: "eth0", 3: "eth1"}


def make_record(**fields):
    """A v1 record packed from keyword overrides of a typical IPv4 TCP SYN."""
    values = {
        "ts_boot_ns": BOOT_NS + 123456789,
        "ifindex": 2,
        "pkt_len": 74,
        "dir": 0,
        "action": 1,
        "rule": 1,
        "vlan": 0,
        "eth_proto": 0x0800,
        "src_mac": bytes.fromhex("020000000001"),
        "dst_mac": bytes.fromhex("020000000002"),
        "ip_ver": 4,
        "proto": 6,
        "ttl": 64,
        "tcp_flags": 0x02,
        "src_port": 40000,
        "dst_port": 80,
        "src_ip": socket.inet_aton("203.0.113.12").ljust(16, b"\0"),
        "dst_ip": socket.inet_aton("198.51.100.7").ljust(16, b"\0"),
        "payload_len": 0,
        "flags": 0,
        "version": 1,
        "rewrite": 0,
    }
    payload = fields.pop("payload", b"")
    unknown = set(fields) - set(values)
    assert not unknown, unknown
    values.update(fields)
    if payload and "payload_len" not in fields:
        values["payload_len"] = len(payload)
    return _records.RECORD.pack(*values.values()) + payload
