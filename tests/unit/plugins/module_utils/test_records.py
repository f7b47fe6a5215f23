# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decoding of header records v1 (module_utils/_records.py): pure, no kernel."""

import json
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
from record_samples import ALL_FIELDS, BOOT_NS, IFACES, OFFSET_NS, RULES, WALL_SECOND, make_record

from ansible_collections.bpfleet.core.plugins.module_utils import _records

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def decode(raws, fields=None, **kwargs):
    fields = ALL_FIELDS if fields is None else fields
    kwargs.setdefault("host", "h1")
    kwargs.setdefault("rule_names", RULES)
    kwargs.setdefault("iface_names", IFACES)
    kwargs.setdefault("boot_to_realtime_ns", OFFSET_NS)
    return _records.decode_batch(raws, fields, **kwargs)


def decode_one(raw, fields=None, **kwargs):
    result = decode([raw], fields, **kwargs)
    assert result.malformed == 0
    assert len(result.records) == 1
    return result.records[0]


# --- layout -------------------------------------------------------------------------

def test_record_is_88_bytes_version_1():
    assert _records.RECORD_SIZE == 88
    assert _records.RECORD_VERSION == 1


def test_layout_matches_hand_laid_offsets_of_the_c_struct():
    """Bytes placed at the C struct's offsets by hand, not through RECORD.pack."""
    raw = bytearray(88)
    struct.pack_into("<Q", raw, 0, BOOT_NS)           # ts_boot_ns
    struct.pack_into("<I", raw, 8, 3)                 # ifindex
    struct.pack_into("<I", raw, 12, 1514)             # pkt_len
    raw[16] = 1                                       # dir egress
    raw[17] = 2                                       # action rate_limited
    struct.pack_into("<H", raw, 18, 2)                # rule
    struct.pack_into("<H", raw, 20, 100)              # vlan
    struct.pack_into("<H", raw, 22, 0x86DD)           # eth_proto
    raw[24:30] = bytes.fromhex("aabbccddeeff")        # src_mac
    raw[30:36] = bytes.fromhex("112233445566")        # dst_mac
    raw[36] = 6                                       # ip_ver
    raw[37] = 17                                      # proto
    raw[38] = 255                                     # hop limit
    raw[39] = 0                                       # tcp_flags
    struct.pack_into("<H", raw, 40, 5353)             # src_port
    struct.pack_into("<H", raw, 42, 53)               # dst_port
    raw[44:60] = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    raw[60:76] = socket.inet_pton(socket.AF_INET6, "2001:db8:bad::2")
    struct.pack_into("<H", raw, 76, 0)                # payload_len
    raw[78] = 0                                       # flags
    raw[79] = 1                                       # version
    struct.pack_into("<H", raw, 80, 2)                # rewrite (a rule id: named like rules)
    record = decode_one(bytes(raw))
    assert record == {
        "ts": "2026-11-23T17:00:00.000000000Z", "host": "h1", "iface": "eth1", "dir": "egress",
        "action": "rate_limited", "rule": "allow", "src_mac": "aa:bb:cc:dd:ee:ff",
        "dst_mac": "11:22:33:44:55:66", "vlan": 100, "ip_ver": 6, "src_ip": "2001:db8::1",
        "dst_ip": "2001:db8:bad::2", "ttl": 255, "len": 1514, "proto": "udp", "src_port": 5353,
        "dst_port": 53, "tcp_flags": None, "rewrite": "allow",
    }


@pytest.mark.skipif(not shutil.which("cc"),
                    reason="no C compiler to check bpf/include/bpfleet_record.h (scripts/bootstrap.sh installs gcc)")
def test_python_layout_matches_the_kernel_header(tmp_path):
    """The struct in bpf/include/bpfleet_record.h (what the kernel writes) has the offsets
    RECORD decodes: compile it with the host compiler and compare field by field."""
    fields = ["ts_boot_ns", "ifindex", "pkt_len", "dir", "action", "rule", "vlan", "eth_proto", "src_mac",
              "dst_mac", "ip_ver", "proto", "ttl", "tcp_flags", "src_port", "dst_port", "src_ip", "dst_ip",
              "payload_len", "flags", "version", "rewrite"]
    program = tmp_path / "offsets.c"
    program.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;\n"
        '#include "%s"\nint main(void) {\n' % os.path.join(REPO, "bpf", "include", "bpfleet_record.h")
        + "".join('printf("%%zu\\n", offsetof(struct bpfleet_record, %s));\n' % name for name in fields)
        + 'printf("%zu\\n", sizeof(struct bpfleet_record));\nreturn 0;\n}\n')
    binary = tmp_path / "offsets"
    subprocess.run(["cc", "-o", str(binary), str(program)], check=True)
    c_offsets = [int(line) for line in subprocess.run([str(binary)], check=True, capture_output=True,
                                                      text=True).stdout.split()]
    # Offsets of RECORD's format, member by member ("6x" padding at the end excluded).
    python_offsets = []
    offset = 0
    for code in ["Q", "I", "I", "B", "B", "H", "H", "H", "6s", "6s", "B", "B", "B", "B", "H", "H", "16s", "16s",
                 "H", "B", "B", "H"]:
        python_offsets.append(offset)
        offset += struct.calcsize("<" + code)
    assert c_offsets == python_offsets + [_records.RECORD_SIZE]
    assert _records.RECORD.format == "<" + "".join(
        ["Q", "I", "I", "B", "B", "H", "H", "H", "6s", "6s", "B", "B", "B", "B", "H", "H", "16s", "16s", "H",
         "B", "B", "H", "6x"])


# --- every field ------------------------------------------------------------------------

def test_ipv4_tcp_record_every_field_in_order():
    record = decode_one(make_record(tcp_flags=0x12))
    assert list(record) == list(_records.KEY_ORDER[:-1])    # all but http (no parser)
    assert record == {
        "ts": "2026-11-23T17:00:00.123456789Z",
        "host": "h1",
        "iface": "eth0",
        "dir": "ingress",
        "action": "drop",
        "rule": "deny",
        "src_mac": "02:00:00:00:00:01",
        "dst_mac": "02:00:00:00:00:02",
        "vlan": None,
        "ip_ver": 4,
        "src_ip": "203.0.113.12",
        "dst_ip": "198.51.100.7",
        "ttl": 64,
        "len": 74,
        "proto": "tcp",
        "src_port": 40000,
        "dst_port": 80,
        "tcp_flags": "SYN|ACK",
        "rewrite": None,
    }


def test_ipv6_udp_record():
    record = decode_one(make_record(
        ip_ver=6, proto=17, ttl=1, tcp_flags=0, src_port=546, dst_port=547, vlan=42, dir=1, action=0, rule=0,
        src_ip=socket.inet_pton(socket.AF_INET6, "2001:db8:0:0:0:0:0:12"),
        dst_ip=socket.inet_pton(socket.AF_INET6, "2001:db8:ffff::1:0")))
    assert record["ip_ver"] == 6
    assert record["src_ip"] == "2001:db8::12"
    assert record["dst_ip"] == "2001:db8:ffff::1:0"
    assert record["proto"] == "udp"
    assert (record["src_port"], record["dst_port"]) == (546, 547)
    assert record["tcp_flags"] is None          # not TCP
    assert record["ttl"] == 1
    assert record["vlan"] == 42
    assert (record["dir"], record["action"], record["rule"]) == ("egress", "pass", "default")


@pytest.mark.parametrize("ip_ver, proto, name", [(4, 1, "icmp"), (6, 58, "icmpv6"), (4, 47, 47), (6, 132, 132)])
def test_protocols_without_ports(ip_ver, proto, name):
    record = decode_one(make_record(ip_ver=ip_ver, proto=proto, src_port=0, dst_port=0, tcp_flags=0))
    assert record["proto"] == name
    assert record["src_port"] is None
    assert record["dst_port"] is None
    assert record["tcp_flags"] is None


def test_tcp_without_flags_is_an_empty_string_not_null():
    assert decode_one(make_record(tcp_flags=0))["tcp_flags"] == ""


@pytest.mark.parametrize("flags, text", [
    (0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"), (0x40, "ECE"),
    (0x80, "CWR"), (0x11, "FIN|ACK"), (0x18, "PSH|ACK"), (0xFF, "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"),
])
def test_tcp_flags_text(flags, text):
    assert _records.tcp_flags_text(flags) == text
    assert decode_one(make_record(tcp_flags=flags))["tcp_flags"] == text


def test_non_ip_frame_has_null_l3_l4_fields():
    record = decode_one(make_record(ip_ver=0, proto=0, ttl=0, src_port=0, dst_port=0, tcp_flags=0,
                                    eth_proto=0x0806, src_ip=bytes(16), dst_ip=bytes(16)))
    for key in ("ip_ver", "src_ip", "dst_ip", "ttl", "proto", "src_port", "dst_port", "tcp_flags"):
        assert record[key] is None, key
    assert record["len"] == 74
    assert record["src_mac"] == "02:00:00:00:00:01"


def test_unknown_direction_action_and_rule_ids_stay_visible():
    record = decode_one(make_record(dir=7, action=9, rule=12))
    assert (record["dir"], record["action"], record["rule"]) == ("7", "9", "12")


def test_rule_none_is_null_and_rule_names_accept_int_keys():
    assert decode_one(make_record(rule=0xFFFF))["rule"] is None
    assert decode_one(make_record(rule=3), rule_names={3: "ports[0]"})["rule"] == "ports[0]"


def test_unknown_ifindex_is_its_number_and_lazy_mappings_are_used():
    assert decode_one(make_record(ifindex=99))["iface"] == "99"

    class Lazy(dict):
        def __missing__(self, ifindex):
            self[ifindex] = "if%d" % ifindex
            return self[ifindex]

    names = Lazy()
    assert decode_one(make_record(ifindex=7), iface_names=names)["iface"] == "if7"
    assert names == {7: "if7"}


# --- timestamps ---------------------------------------------------------------------------

def test_timestamps_keep_nanoseconds_across_seconds():
    raws = [make_record(ts_boot_ns=BOOT_NS + delta) for delta in
            (0, 1, 999_999_999, 1_000_000_000, 61_000_000_005, 999_999_999)]
    records = decode(raws).records
    assert [r["ts"] for r in records] == [
        "2026-11-23T17:00:00.000000000Z",
        "2026-11-23T17:00:00.000000001Z",
        "2026-11-23T17:00:00.999999999Z",
        "2026-11-23T17:00:01.000000000Z",
        "2026-11-23T17:01:01.000000005Z",
        "2026-11-23T17:00:00.999999999Z",       # back to a second seen before: the cache must follow
    ]


def test_decoder_reuses_its_second_cache_between_batches_correctly():
    decoder = _records.RecordDecoder(["len"], "h1")
    first = decoder.decode_batch([make_record(ts_boot_ns=BOOT_NS)], OFFSET_NS).records[0]
    second = decoder.decode_batch([make_record(ts_boot_ns=BOOT_NS)], OFFSET_NS + 86_400_000_000_000).records[0]
    third = decoder.decode_batch([make_record(ts_boot_ns=BOOT_NS + 5)], OFFSET_NS + 86_400_000_000_000).records[0]
    assert first["ts"] == "2026-11-23T17:00:00.000000000Z"
    assert second["ts"] == "2026-11-24T17:00:00.000000000Z"
    assert third["ts"] == "2026-11-24T17:00:00.000000005Z"     # same second as the previous batch


def test_format_timestamp_ns():
    assert _records.format_timestamp_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert _records.format_timestamp_ns(WALL_SECOND * 10**9 + 42) == "2026-11-23T17:00:00.000000042Z"


def test_boot_to_realtime_offset_matches_the_clocks():
    offset = _records.boot_to_realtime_offset_ns()
    expected = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(offset - expected) < 50_000_000       # 50 ms: generous for a loaded CI machine


# --- field selection ------------------------------------------------------------------------

def test_only_requested_fields_plus_the_base_four_in_canonical_order():
    record = decode_one(make_record(), fields=["dst_port", "src_ip", "action"])
    assert list(record) == ["ts", "host", "iface", "dir", "action", "src_ip", "dst_port"]
    assert record["action"] == "drop"
    assert record["src_ip"] == "203.0.113.12"
    assert record["dst_port"] == 80


def test_no_fields_gives_the_base_four():
    assert list(decode_one(make_record(), fields=[])) == ["ts", "host", "iface", "dir"]


def test_unknown_fields_are_ignored_and_reported():
    decoder = _records.RecordDecoder(["src_ip", "favourite_colour", "ts"], "h1")
    assert decoder.fields == ("src_ip",)
    assert decoder.unknown_fields == ("favourite_colour",)


def test_records_serialise_to_ascii_json():
    records = decode([make_record(), make_record(ip_ver=6, proto=58)], host="hôte").records
    for record in records:
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        assert line.isascii()
        assert json.loads(line) == record


# --- malformed input ------------------------------------------------------------------------

def test_malformed_records_are_counted_and_the_rest_decoded():
    good = make_record()
    raws = [
        good,
        good[:87],                                  # too short
        b"",                                        # empty
        make_record(version=2),                     # unknown version
        make_record(version=0),
        make_record(payload_len=10),                # claims payload that is not there
        bytearray(good),                            # other buffer types are fine
        memoryview(make_record(dst_port=443)),
    ]
    result = decode(raws, ["dst_port"])
    assert result.malformed == 5
    assert [r["dst_port"] for r in result.records] == [80, 80, 443]


def test_decode_single_raises_with_a_reason():
    decoder = _records.RecordDecoder(ALL_FIELDS, "h1")
    with pytest.raises(_records.MalformedRecord, match="40 bytes"):
        decoder.decode(b"\0" * 40, 0)
    with pytest.raises(_records.MalformedRecord, match="version 3"):
        decoder.decode(make_record(version=3), 0)
    with pytest.raises(_records.MalformedRecord, match="payload_len 5"):
        decoder.decode(make_record(payload_len=5), 0)
    assert decoder.decode(make_record(), OFFSET_NS)["src_ip"] == "203.0.113.12"


def test_empty_batch():
    assert decode([]) == _records.DecodeResult([], 0)


# --- payload hook -------------------------------------------------------------------------

def test_payload_bytes_reach_the_parser_and_become_the_http_key():
    seen = []

    def parser(payload, truncated):
        seen.append((payload, truncated))
        return {"method": payload.split(b" ", 1)[0].decode()}

    request = b"GET / HTTP/1.1\r\nHost: example\r\n"
    raws = [make_record(payload=request, flags=1), make_record()]
    records = decode(raws, ["http", "dst_port"], payload_parser=parser).records
    assert seen == [(request, True)]
    assert records[0]["http"] == {"method": "GET"}
    assert list(records[0]) == ["ts", "host", "iface", "dir", "dst_port", "http"]
    assert "http" not in records[1]                 # no payload, no key


def test_payload_parser_not_called_unless_http_requested_and_failures_keep_the_record():
    def exploding(payload, truncated):
        raise RuntimeError("parser bug")

    raw = make_record(payload=b"GET /")
    assert "http" not in decode_one(raw, ["src_ip"], payload_parser=exploding)
    record = decode_one(raw, ["http", "src_ip"], payload_parser=exploding)
    assert "http" not in record
    assert record["src_ip"] == "203.0.113.12"
    assert _records.parse_payload(b"GET /", False) is None        # default hook: not implemented yet


def test_record_payload_extracts_the_bytes_after_the_fixed_part():
    raw = make_record(payload=b"abcdef", flags=1)
    assert _records.record_payload(raw) == (b"abcdef", True)
    assert _records.record_payload(make_record()) == (b"", False)
