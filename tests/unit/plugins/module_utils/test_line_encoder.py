# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_records.LineEncoder: JSON lines straight from ring-buffer bytes, the agent's hot path.

The reference is RecordDecoder plus json.dumps: for any records (fast-path L3/L4 records,
records with HTTP payloads, discarded and still-busy ones, anything malformed) the encoder
must give byte-identical lines and stop exactly where a reader must stop.
"""

import json
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from record_samples import ALL_FIELDS, IFACES, OFFSET_NS, RULES, make_record

from ansible_collections.bpfleet.core.plugins.module_utils import _records

BUSY = 1 << 31
DISCARD = 1 << 30


def slot(raw, header_flags=0):
    """A record as the ring lays it out: u32 length | flags, u32 page offset, payload, pad to 8."""
    body = struct.pack("<II", len(raw) | header_flags, 0) + raw
    return body + bytes(-len(body) % 8)


def reference(raws, fields, host="h1"):
    decoder = _records.RecordDecoder(fields, host, RULES, IFACES, http={})
    result = decoder.decode_batch(raws, OFFSET_NS)
    return [json.dumps(record, separators=(",", ":")) for record in result.records], result.malformed


def encoder(fields, host="h1"):
    return _records.LineEncoder(_records.RecordDecoder(fields, host, RULES, IFACES, http={}))


FIELD_SETS = [ALL_FIELDS, [], ["len"], ["ttl", "tcp_flags"], ["tcp_flags"], ["rule", "src_ip", "len", "proto"],
              ["len", "http"], ["dst_port", "ttl"]]


def mixed_records():
    raws = []
    for index in range(60):
        raws.append(make_record(
            ts_boot_ns=5_000_000_000 + index * 97_000_000, ifindex=2 + index % 3, pkt_len=60 + index,
            dir=index % 2, action=index % 4, rule=(0, 1, 2, 0xFFFF, 77)[index % 5], vlan=(0, 42)[index % 2],
            ip_ver=(4, 6, 0)[index % 3], proto=(6, 17, 1, 58, 47)[index % 5], ttl=index, tcp_flags=index * 7 % 256,
            src_port=index, dst_port=80 + index % 2,
            src_ip=bytes([203, 0, 113, index]) + bytes(12), dst_ip=socket.inet_pton(socket.AF_INET6, "2001:db8::7")))
    return raws


def test_fast_path_lines_equal_decoder_plus_json_for_every_field_set():
    raws = mixed_records()
    span = b"".join(slot(raw) for raw in raws)
    for fields in FIELD_SETS:
        lines, consumed, malformed = encoder(fields).encode(span, OFFSET_NS)
        expected = reference(raws, fields)[0]
        assert lines == expected, fields
        assert consumed == len(span)
        assert malformed == 0


def test_payload_discarded_and_malformed_records_between_fast_ones():
    request = b"GET /v1/chat HTTP/1.1\r\nHost: api\r\nAuthorization: \0\0\0\0\r\n\r\n"
    raws = [make_record(pkt_len=1), make_record(pkt_len=2, payload=request), make_record(pkt_len=3),
            make_record(pkt_len=4, version=9), make_record(pkt_len=5)]
    span = slot(raws[0]) + slot(raws[1]) + slot(make_record(pkt_len=99), DISCARD) + slot(raws[2]) \
        + slot(raws[3]) + slot(raws[4])
    lines, consumed, malformed = encoder(ALL_FIELDS + ["http"]).encode(span, OFFSET_NS)
    expected, expected_malformed = reference(raws, ALL_FIELDS + ["http"])
    assert lines == expected
    assert [json.loads(line)["len"] for line in lines] == [1, 2, 3, 5]
    assert json.loads(lines[1])["http"]["path"] == "/v1/chat"
    assert consumed == len(span)
    assert malformed == expected_malformed == 1


def test_stops_before_a_busy_record_and_reports_the_bytes_walked():
    first = slot(make_record(pkt_len=1)) + slot(make_record(pkt_len=2))
    span = first + slot(make_record(pkt_len=3), BUSY) + slot(make_record(pkt_len=4))
    lines, consumed = encoder(["len"]).encode(span, OFFSET_NS)[:2]
    assert [json.loads(line)["len"] for line in lines] == [1, 2]
    assert consumed == len(first)


def test_a_span_cut_inside_a_record_stops_before_it():
    whole = slot(make_record(pkt_len=1))
    for cut in (1, 7, 8, 50, 95):
        lines, consumed = encoder(["len"]).encode(whole + slot(make_record(pkt_len=2))[:cut], OFFSET_NS)[:2]
        assert len(lines) == 1 and consumed == len(whole), cut
    payload = slot(make_record(payload=b"GET / HTTP/1.1\r\n\r\n"))
    lines, consumed = encoder(["len"]).encode(whole + payload[:-9], OFFSET_NS)[:2]
    assert (len(lines), consumed) == (1, len(whole))


def test_seconds_change_mid_batch_and_between_batches_and_offsets():
    enc = encoder([])
    times = [5_999_999_999, 6_000_000_000, 6_000_000_001, 5_000_000_000, 9_500_000_000]
    span = b"".join(slot(make_record(ts_boot_ns=value)) for value in times)
    for offset in (OFFSET_NS, OFFSET_NS + 400_000_000, OFFSET_NS):
        lines = enc.encode(span, offset)[0]
        decoder = _records.RecordDecoder([], "h1", RULES, IFACES)
        assert [json.loads(line)["ts"] for line in lines] == [
            record["ts"] for record in decoder.decode_batch([make_record(ts_boot_ns=value) for value in times],
                                                            offset).records]


def test_names_with_percent_quotes_and_non_ascii_are_json_escaped():
    enc = _records.LineEncoder(_records.RecordDecoder(
        ["rule"], 'h"%s', {"1": "r%d\u00e9\n"}, {2: "e%th0"}))
    line = enc.encode(slot(make_record()), OFFSET_NS)[0][0]
    assert line.isascii()
    record = json.loads(line)
    assert (record["host"], record["iface"], record["rule"]) == ('h"%s', "e%th0", "r%d\u00e9\n")


def test_reset_picks_up_new_interface_names():
    names = {2: "eth0"}
    enc = _records.LineEncoder(_records.RecordDecoder([], "h1", RULES, names))
    span = slot(make_record())
    assert json.loads(enc.encode(span, OFFSET_NS)[0][0])["iface"] == "eth0"
    names[2] = "wan0"
    enc.reset()
    assert json.loads(enc.encode(span, OFFSET_NS)[0][0])["iface"] == "wan0"


def test_template_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_records, "TEMPLATE_CACHE_LIMIT", 10)
    enc = encoder(["src_port"])
    span = b"".join(slot(make_record(src_port=port)) for port in range(35))
    lines = enc.encode(span, OFFSET_NS)[0]
    assert [json.loads(line)["src_port"] for line in lines] == list(range(35))
    assert len(enc._templates) <= 10


def test_last_ts():
    lines = encoder([]).encode(slot(make_record()), OFFSET_NS)[0]
    assert _records.LineEncoder.last_ts(lines) == json.loads(lines[-1])["ts"]
    assert _records.LineEncoder.last_ts([]) is None


record_values = st.fixed_dictionaries({
    "ts_boot_ns": st.integers(0, 2**63 - 1 - OFFSET_NS), "ifindex": st.integers(0, 2**32 - 1),
    "pkt_len": st.integers(0, 2**32 - 1), "dir": st.integers(0, 255), "action": st.integers(0, 255),
    "rule": st.integers(0, 0xFFFF), "vlan": st.integers(0, 0xFFFF), "src_mac": st.binary(min_size=6, max_size=6),
    "ip_ver": st.sampled_from([0, 4, 6, 5]), "proto": st.integers(0, 255), "ttl": st.integers(0, 255),
    "tcp_flags": st.integers(0, 255), "src_port": st.integers(0, 0xFFFF),
    "src_ip": st.binary(min_size=16, max_size=16),
})


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(record_values, max_size=12), st.sampled_from(FIELD_SETS))
def test_property_any_records_encode_like_the_reference(values, fields):
    raws = [make_record(**value) for value in values]
    lines, consumed, malformed = encoder(fields).encode(b"".join(slot(raw) for raw in raws), OFFSET_NS)
    assert (lines, malformed) == reference(raws, fields)
    assert consumed == sum(len(slot(raw)) for raw in raws)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_property_arbitrary_bytes_never_raise_and_never_overrun(span):
    lines, consumed, malformed = encoder(ALL_FIELDS + ["http"]).encode(span, OFFSET_NS)
    assert 0 <= consumed <= len(span) + 7
    for line in lines:
        json.loads(line)
