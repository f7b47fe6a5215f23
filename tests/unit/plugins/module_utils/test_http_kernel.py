# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tc loggers in the real kernel: L3/L4 records, log.match and sampling, and HTTP capture
with in-kernel redaction, read back as raw ring-buffer records.

Policies are rendered here (controller side) and compiled, verified and pinned with BCC by
one helper under /usr/bin/python3 inside a private mount namespace with its own bpffs
(nothing is attached to any interface). This process then reaches the programs and ring
buffers by id and feeds the programs frames with BPF_PROG_TEST_RUN. No mocks: real clang,
real verifier, real programs.

The central check: the bytes the kernel hands to user space are exactly what the Python
model of the scanner (_http.scan_like_the_kernel) predicts, and no secret is among them.
The figures (verifier instructions, ns per packet) are printed and attached to the report
as properties; docs/logging-http.md quotes them.
"""

import json
import os
import socket
import struct
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_parser import requests_with_secrets

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _http, _policy, _records, _ringbuf
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))
import private_bpffs  # noqa: E402  (tests/fleet: compile and pin with BCC in a private bpffs)

XDP_DROP, XDP_PASS, TC_ACT_OK = 1, 2, 0
STAT_RECORDS_EMITTED = _contract.STAT_RECORDS_EMITTED

CLIENT_MAC, SERVER_MAC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
CLIENT_V4, SERVER_V4 = "203.0.113.12", "203.0.113.11"
CLIENT_V6, SERVER_V6 = "2001:db8:100::12", "2001:db8:100::11"
DENIED_V4 = "198.51.100.9"

SMALL = {"name": "ht-small", "interfaces": ["eth0"], "filter": {"deny": ["198.51.100.0/24"]},
         "log": {"fields": list(_policy.LOG_FIELDS),
                 "http": {"ports": [80, 8080], "headers": ["host", "user-agent"], "redact": ["x-session"],
                          "redact_containing": ["sig"], "max_bytes": 256}}}
LARGE = {"name": "ht-large", "interfaces": ["eth0"],
         "log": {"http": {"ports": [80], "redact": ["x-session"], "max_bytes": _http.MAX_MAX_BYTES}}}
DEFAULT = {"name": "ht-default", "interfaces": ["eth0"], "log": {"http": {}}}
MIDDLE = {"name": "ht-1024", "interfaces": ["eth0"], "log": {"http": {"max_bytes": 1024}}}
PLAIN = {"name": "ht-plain", "interfaces": ["eth0"], "log": {}}
MATCHED = {"name": "ht-match", "interfaces": ["eth0"], "filter": {"deny": ["198.51.100.0/24"]},
           "log": {"match": [{"proto": "tcp", "port": 80}, {"proto": "udp", "dst_port": "5000-5010"}]}}
SAMPLED = {"name": "ht-sample", "interfaces": ["eth0"], "log": {"sample": "1/4"}}
REQUESTS = {"name": "ht-requests", "interfaces": ["eth0"], "filter": {"deny": ["198.51.100.0/24"]},
            "log": {"http": {"requests_only": True}}}
# The fallbacks of issue 13: the same policies compiled as for kernels without the feature.
SMALL_NO_META = dict(SMALL, name="ht-small-nometa")
PLAIN_NO_BOOT_CLOCK = dict(PLAIN, name="ht-plain-noboot")
POLICIES = (SMALL, LARGE, DEFAULT, MIDDLE, PLAIN, MATCHED, SAMPLED, REQUESTS, SMALL_NO_META, PLAIN_NO_BOOT_CLOCK)
MASKS = {"ht-small-nometa": ["xdp_adjust_meta_in_xdp"],
         "ht-plain-noboot": ["ktime_get_boot_ns_in_xdp", "ktime_get_boot_ns_in_sched_cls"]}


class Loaded:
    """One compiled policy: fds of its programs, its ring buffer and its stats map."""

    def __init__(self, model, entry):
        self.model = model
        self.info = entry["programs"]
        self.features = entry["features"]
        self.progs = dict((pin, bpf.prog_get_fd_by_id(info["id"])) for pin, info in entry["programs"].items())
        events = bpf.map_get_fd_by_id(entry["maps"]["events"])
        try:
            self.ring = _ringbuf.RingBuffer(events)
        finally:
            bpf.close_fd(events)
        self.stats = bpf.map_get_fd_by_id(entry["maps"]["stats"])
        # What the policy module would write into the deny list (map_contents).
        deny = bpf.map_get_fd_by_id(entry["maps"]["deny_v4"])
        try:
            for cidr, rule in _policy.map_contents(model)["deny_v4"]:
                address, prefix = cidr.split("/")
                bpf.map_update(deny, struct.pack("=I4s", int(prefix), socket.inet_aton(address)),
                               struct.pack("=I", rule))
        finally:
            bpf.close_fd(deny)

    def run(self, pin, frame, repeat=1):
        self.ring.drain()
        result = bpf.prog_test_run(self.progs[pin], frame, repeat=repeat)
        return result, self.ring.drain()

    def stat(self, slot):
        return sum(struct.unpack_from("=Q", value)[0] for value in
                   bpf.percpu_lookup(self.stats, struct.pack("=I", slot), 16))

    def close(self):
        self.ring.close()
        bpf.close_fd(self.stats)
        for fd in self.progs.values():
            bpf.close_fd(fd)


@pytest.fixture(scope="module")
def kernel():
    reason = private_bpffs.skip_reason()
    if reason:
        pytest.skip(reason)
    models, policies = {}, []
    for raw in POLICIES:
        model = _policy.validate(raw, raw["name"])[0]
        rendered = _render.render(model)
        models[raw["name"]] = model
        policies.append({"name": raw["name"], "source": rendered["source"], "programs": rendered["programs"],
                         "mask_features": MASKS.get(raw["name"], [])})
    loaded = {}
    with private_bpffs.pinned_policies(policies, timeout=60) as report:
        errors = dict((name, entry["error"]) for name, entry in report.items() if "error" in entry)
        assert not errors, errors
        for name, entry in report.items():
            loaded[name] = Loaded(models[name], entry)
    yield loaded
    for policy in loaded.values():
        policy.close()


# --- frames --------------------------------------------------------------------------------

def tcp_segment(payload=b"", sport=40000, dport=80, flags=0x18):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload


def frame(l4, proto=6, src=CLIENT_V4, dst=SERVER_V4, vlan=None, pad_to=0):
    """Ethernet frame (optionally 802.1Q tagged) with an IPv4 or IPv6 packet carrying l4."""
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 61, socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 63, proto, 0, socket.inet_aton(src),
                         socket.inet_aton(dst))
        ethertype = 0x0800
    eth = SERVER_MAC + CLIENT_MAC
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    data = eth + struct.pack("!H", ethertype) + ip + l4
    return data + b"\0" * max(0, pad_to - len(data))


def request_frame(payload, **kwargs):
    return frame(tcp_segment(payload, dport=kwargs.pop("dport", 80)), **kwargs)


def decode(raw):
    fields = dict(zip(("ts", "ifindex", "pkt_len", "dir", "action", "rule", "vlan", "eth_proto", "src_mac", "dst_mac",
                       "ip_ver", "proto", "ttl", "tcp_flags", "src_port", "dst_port", "src_ip", "dst_ip",
                       "payload_len", "flags", "version", "rewrite"), _records.RECORD.unpack_from(raw),
                      strict=True))
    fields["payload"] = bytes(raw[_records.RECORD_SIZE:_records.RECORD_SIZE + fields["payload_len"]])
    return fields


def one_record(loaded, pin, data):
    result, records = loaded.run(pin, data)
    assert result["retval"] == TC_ACT_OK
    assert len(records) == 1, "expected one record, got %d" % len(records)
    return records[0], decode(records[0])


# --- HTTP capture ------------------------------------------------------------------------------

def expected_capture(model, payload):
    """(bytes, flags) the kernel should hand over for this request payload."""
    http = model["log"]["http"]
    captured = payload[:http["max_bytes"]]
    rules = _http.RedactionRules(http["redact"], http["redact_containing"])
    kernel = _http.scan_like_the_kernel(captured, rules)
    if kernel is None:
        return b"", 0
    scanned, end = kernel
    flags = _records.PAYLOAD_REDACTED
    if end is None:
        flags |= _records.PAYLOAD_TRUNCATED
    if len(payload) > http["max_bytes"]:
        flags |= _records.PAYLOAD_CUT
    return scanned, flags


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(request=requests_with_secrets(), pin=st.sampled_from(("prog_tc_egress", "prog_tc_ingress")),
       policy=st.sampled_from(("ht-small", "ht-large")))
def test_kernel_hands_over_what_the_model_predicts_and_no_secret(kernel, request, pin, policy):
    payload, hidden = request
    if len(payload) < 8:
        return
    loaded = kernel[policy]
    raw, record = one_record(loaded, pin, request_frame(payload))
    expected, flags = expected_capture(loaded.model, payload)
    assert record["payload"] == expected
    assert record["flags"] == flags
    assert record["version"] == _records.RECORD_VERSION
    assert (record["dir"], record["proto"], record["src_port"], record["dst_port"]) == (
        0 if pin == "prog_tc_ingress" else 1, 6, 40000, 80)
    for secret in hidden:
        assert secret[:8].encode() not in bytes(raw), "a secret reached user space"


REQUEST = (b"GET /login?user=ann&access_token=AT-s3cr3t-1&page=2 HTTP/1.1\r\nHost: web\r\n"
           b"Authorization: Bearer BT-s3cr3t-2\r\nCookie: sid=CK-s3cr3t-3\r\nUser-Agent: curl/8.0\r\n"
           b"X-Session: XS-s3cr3t-4\r\nX-Url-Sig: SG-s3cr3t-5\r\n\r\nbody=BD-s3cr3t-6")


def test_a_request_is_captured_blanked_and_cut_at_the_headers(kernel):
    loaded = kernel["ht-small"]
    raw, record = one_record(loaded, "prog_tc_ingress", request_frame(REQUEST))
    assert b"s3cr3t" not in bytes(raw)
    head = REQUEST[:REQUEST.index(b"\r\n\r\n") + 3]
    assert record["payload_len"] == len(head)           # the body does not leave the kernel
    assert record["flags"] == _records.PAYLOAD_REDACTED
    assert record["payload"].startswith(b"GET /login?user=ann&access_token=" + b"*" * len(b"AT-s3cr3t-1") +
                                        b"&page=2 HTTP/1.1\r\n")
    assert b"Host: web\r\n" in record["payload"] and b"User-Agent: curl/8.0\r\n" in record["payload"]
    # What the agent writes from it.
    decoder = _records.RecordDecoder(["src_ip", "dst_port", "http"], "h1", http=loaded.model["log"]["http"])
    line = json.dumps(decoder.decode(raw, 0))
    assert "s3cr3t" not in line
    assert json.loads(line)["http"] == {
        "method": "GET", "path": "/login?user=ann&access_token=[REDACTED]&page=2", "version": "HTTP/1.1",
        "headers": {"host": "web", "authorization": "[REDACTED]", "cookie": "[REDACTED]", "user-agent": "curl/8.0",
                    "x-session": "[REDACTED]", "x-url-sig": "[REDACTED]"},
        "truncated": False}


def test_a_request_larger_than_max_bytes_is_cut_and_marked(kernel):
    loaded = kernel["ht-small"]
    payload = (b"POST /upload HTTP/1.1\r\nHost: web\r\nX-Pad: " + b"p" * 300 +
               b"\r\nAuthorization: Basic B-s3cr3t\r\n\r\n")
    raw, record = one_record(loaded, "prog_tc_egress", request_frame(payload))
    assert record["payload_len"] == 256
    assert record["flags"] == _records.PAYLOAD_REDACTED | _records.PAYLOAD_TRUNCATED | _records.PAYLOAD_CUT
    decoder = _records.RecordDecoder(["http"], "h1", http=loaded.model["log"]["http"])
    assert decoder.decode(raw, 0)["http"]["truncated"] is True


def test_ipv6_and_vlan_tagged_requests_are_captured(kernel):
    loaded = kernel["ht-small"]
    for data, vlan, ip_ver in ((request_frame(REQUEST, src=CLIENT_V6, dst=SERVER_V6), 0, 6),
                               (request_frame(REQUEST, vlan=42), 42, 4),
                               (request_frame(REQUEST, dport=8080), 0, 4)):
        raw, record = one_record(loaded, "prog_tc_egress", data)
        assert (record["vlan"], record["ip_ver"]) == (vlan, ip_ver)
        assert record["payload_len"] > 0 and b"s3cr3t" not in bytes(raw)


def test_the_padding_of_a_short_frame_is_not_payload(kernel):
    payload = b"GET / HTTP/1.0\n\n"
    raw, record = one_record(kernel["ht-small"], "prog_tc_ingress", request_frame(payload, pad_to=120))
    assert record["payload"] == payload and record["pkt_len"] == 120


@pytest.mark.parametrize("data", [
    pytest.param(frame(tcp_segment(b"", flags=0x02)), id="syn"),
    pytest.param(frame(tcp_segment(b"HTTP/1.1 200 OK\r\n\r\n", sport=80, dport=40000)), id="response"),
    pytest.param(request_frame(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"), id="tls-on-port-80"),
    pytest.param(request_frame(REQUEST, dport=81), id="other-port"),
    pytest.param(frame(struct.pack("!HHHH", 40000, 80, 8 + len(REQUEST), 0) + REQUEST, proto=17), id="udp"),
    pytest.param(request_frame(b"GET /"), id="shorter-than-a-method"),
    pytest.param(request_frame(b"GET ZXhh-rest-of-a-split-token\r\nX: y\r\n\r\n"), id="method-word-only"),
    pytest.param(request_frame(b"GET / HTTP/2.0\r\n\r\n"), id="not-http1"),
])
def test_other_packets_get_the_plain_record(kernel, data):
    raw, record = one_record(kernel["ht-small"], "prog_tc_egress", data)
    assert len(raw) == _records.RECORD_SIZE
    assert (record["payload_len"], record["flags"]) == (0, 0)


def test_requests_only_records_the_requests_and_the_drops_and_nothing_else(kernel):
    loaded = kernel["ht-requests"]
    for pin in ("prog_tc_ingress", "prog_tc_egress"):
        records = loaded.run(pin, request_frame(REQUEST))[1]
        assert len(records) == 1 and decode(records[0])["payload_len"] > 0, pin
        for data in (frame(tcp_segment(b"", flags=0x02)),                                        # SYN to port 80
                     frame(tcp_segment(b"HTTP/1.1 200 OK\r\n\r\n", sport=80, dport=40000)),   # the response
                     request_frame(REQUEST, dport=81),                                           # another port
                     frame(struct.pack("!HHHH", 40000, 53, 8, 0), proto=17)):                    # other traffic
            assert len(loaded.run(pin, data)[1]) == 0, (pin, data.hex())
    # The filter's own records stay.
    result, records = loaded.run("prog_xdp", frame(tcp_segment(b"", dport=22), src=DENIED_V4))
    assert result["retval"] == XDP_DROP and len(records) == 1


def test_default_settings_capture_port_80_with_the_default_rules(kernel):
    loaded = kernel["ht-default"]
    raw, record = one_record(loaded, "prog_tc_egress", request_frame(REQUEST))
    assert b"BT-s3cr3t" not in bytes(raw) and b"AT-s3cr3t" not in bytes(raw) and b"CK-s3cr3t" not in bytes(raw)
    # Not in the defaults: only the policies above name them.
    assert b"XS-s3cr3t-4" in bytes(raw) and b"SG-s3cr3t-5" in bytes(raw)


# --- L3/L4 records, log.match, sampling (issue 5 part 1) ------------------------------------------

def test_records_carry_the_l3_l4_fields_both_ways(kernel):
    loaded = kernel["ht-plain"]
    for pin, direction in (("prog_tc_ingress", 0), ("prog_tc_egress", 1)):
        for src, dst, ip_ver in ((CLIENT_V4, SERVER_V4, 4), (CLIENT_V6, SERVER_V6, 6)):
            data = frame(tcp_segment(b"", sport=51000, dport=443, flags=0x12), src=src, dst=dst, vlan=7)
            raw, record = one_record(loaded, pin, data)
            decoded = _records.RecordDecoder(list(_policy.LOG_FIELDS), "h1", rule_names={"0": "default"}).decode(raw, 0)
            assert decoded["dir"] == ("ingress", "egress")[direction]
            assert {key: decoded[key] for key in ("action", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip",
                                                  "ttl", "len", "proto", "src_port", "dst_port", "tcp_flags")} == {
                "action": "pass", "src_mac": "02:00:00:00:00:02", "dst_mac": "02:00:00:00:00:01", "vlan": 7,
                "ip_ver": ip_ver, "src_ip": src, "dst_ip": dst, "ttl": 63 if ip_ver == 4 else 61, "len": len(data),
                "proto": "tcp", "src_port": 51000, "dst_port": 443, "tcp_flags": "SYN|ACK"}
            assert decoded["rule"] == ("default" if direction == 0 else None)


def test_xdp_drop_records_name_the_deny_rule(kernel):
    loaded = kernel["ht-small"]
    result, records = loaded.run("prog_xdp", frame(tcp_segment(b"", dport=22, flags=0x02), src=DENIED_V4))
    assert result["retval"] == XDP_DROP and len(records) == 1
    record = decode(records[0])
    assert (record["action"], record["rule"], record["dir"]) == (_records.ACTIONS.index("drop"), 1, 0)


@pytest.mark.parametrize("name", ["ht-small", "ht-small-nometa"])
def test_xdp_hands_its_verdict_to_the_tc_logger_where_the_kernel_allows(kernel, name):
    """Where the kernel lets XDP call bpf_xdp_adjust_meta, a passed packet leaves XDP with 8
    bytes of metadata before it (BPF_PROG_TEST_RUN returns them with the frame): struct
    verdict_meta, which tc ingress reads instead of repeating the list lookups. Where it does
    not (6.18.44-fc-v1300, or the feature masked), the frame leaves XDP unchanged. A dropped
    packet never carries metadata."""
    loaded = kernel[name]
    with_meta = loaded.features["xdp_adjust_meta_in_xdp"]["available"]
    if name.endswith("-nometa"):
        assert not with_meta and loaded.features["xdp_adjust_meta_in_xdp"]["reason"] == "masked by mask_features"
    data = frame(tcp_segment(b"", dport=443, flags=0x02))
    result = bpf.prog_test_run(loaded.progs["prog_xdp"], data, data_out_size=len(data) + 64)
    loaded.ring.drain()
    assert result["retval"] == XDP_PASS
    if with_meta:
        magic, action, _pad, rule, log_rule = struct.unpack_from("=HBBHH", result["data_out"])
        assert (magic, action, rule, log_rule) == (0xbf1e, _records.ACTIONS.index("pass"), 0, 0xffff)
        assert result["data_out"][8:] == data
    else:
        assert result["data_out"] == data
    dropped = bpf.prog_test_run(loaded.progs["prog_xdp"], frame(tcp_segment(b"", dport=22), src=DENIED_V4),
                                data_out_size=len(data) + 64)
    loaded.ring.drain()
    assert dropped["retval"] == XDP_DROP and dropped["data_out"] == frame(tcp_segment(b"", dport=22), src=DENIED_V4)


def test_without_the_metadata_hand_over_tc_classifies_again(kernel):
    """The fallback of HAVE_XDP_ADJUST_META 0: tc ingress finds no verdict in front of the frame
    and looks the source up itself, so its record still names the rule that matched."""
    loaded = kernel["ht-small-nometa"]
    _raw, record = one_record(loaded, "prog_tc_ingress", frame(tcp_segment(b"", dport=443, flags=0x02),
                                                               src=DENIED_V4))
    assert (record["action"], record["rule"]) == (_records.ACTIONS.index("pass"), 1)
    _raw, record = one_record(loaded, "prog_tc_ingress", frame(tcp_segment(b"", dport=443, flags=0x02)))
    assert (record["action"], record["rule"]) == (_records.ACTIONS.index("pass"), 0)


def test_without_the_boot_clock_records_carry_the_monotonic_clock(kernel):
    """The fallback of HAVE_KTIME_GET_BOOT_NS 0 (kernels before 5.8): bpf_ktime_get_ns, which
    equals the boot clock on a host that never suspended, as test hosts never do."""
    for name in ("ht-plain", "ht-plain-noboot"):
        loaded = kernel[name]
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        _raw, record = one_record(loaded, "prog_tc_egress", frame(tcp_segment(b"", flags=0x10)))
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        assert before - 1000000 <= record["ts"] <= after + 1000000, (name, before, record["ts"], after)


def test_log_match_decides_in_the_kernel_which_packets_are_logged(kernel):
    loaded = kernel["ht-match"]
    cases = [
        (frame(tcp_segment(b"", dport=80, flags=0x02)), 1),
        (frame(tcp_segment(b"", sport=80, dport=40000, flags=0x12)), 1),      # port: either side
        (frame(tcp_segment(b"", dport=22, flags=0x02)), 0),
        (frame(struct.pack("!HHHH", 40000, 5005, 8, 0), proto=17), 1),
        (frame(struct.pack("!HHHH", 5005, 40000, 8, 0), proto=17), 0),          # dst_port only
        (frame(struct.pack("!BBHHH", 8, 0, 0, 1, 1), proto=1), 0),
    ]
    for data, expected in cases:
        for pin in ("prog_tc_ingress", "prog_tc_egress"):
            result, records = loaded.run(pin, data)
            assert len(records) == expected, (pin, data.hex())
    # XDP drops obey it too.
    assert len(loaded.run("prog_xdp", frame(tcp_segment(b"", dport=22), src=DENIED_V4))[1]) == 0
    assert len(loaded.run("prog_xdp", frame(tcp_segment(b"", dport=80), src=DENIED_V4))[1]) == 1


def test_sampling_keeps_about_one_in_n(kernel):
    loaded = kernel["ht-sample"]
    emitted = loaded.stat(STAT_RECORDS_EMITTED)
    runs = 4000
    result, records = loaded.run("prog_tc_egress", frame(tcp_segment(b"", flags=0x10)), repeat=runs)
    # Binomial(4000, 1/4): mean 1000, standard deviation 27; 6 sigma either way.
    assert 840 <= len(records) <= 1160, len(records)
    assert loaded.stat(STAT_RECORDS_EMITTED) - emitted == len(records)


# --- cost ------------------------------------------------------------------------------------

def _ns_per_packet(loaded, pin, data, repeat=2000, rounds=5):
    best = None
    for _round in range(rounds):
        result, _records_out = loaded.run(pin, data, repeat=repeat)
        best = result["duration_ns"] if best is None else min(best, result["duration_ns"])
    return best


def test_cost_of_capture_and_verification(kernel, record_property):
    """Figures for docs/logging-http.md: verifier instructions per max_bytes, ns per packet."""
    figures = {}
    for name in ("ht-small", "ht-default", "ht-1024", "ht-large", "ht-plain"):
        info = kernel[name].info["prog_tc_egress"]
        figures["verified_insns %s (max_bytes %s)" % (name, (kernel[name].model["log"]["http"] or {}).get(
            "max_bytes", "-"))] = info.get("verified_insns")
        # The kernel reports it (bpf_prog_info.verified_insns, 5.16+): a missing key is a failure, not 0.
        assert "verified_insns" in info, "%s: no verified_insns in the program info: %s" % (name, sorted(info))
        assert 0 < info["verified_insns"] < 500000       # half the verifier's limit of 1 M
    pad = b"X-Pad: " + b"p" * 4096
    base = b"GET /index.html HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8.0\r\nAuthorization: Bearer x\r\n"
    for size in (128, 512, 2048):
        payload = (base + pad)[:size - 4] + b"\r\n\r\n"
        figures["ns/pkt http request %d B (max_bytes 2048)" % size] = _ns_per_packet(
            kernel["ht-large"], "prog_tc_egress", request_frame(payload))
    figures["ns/pkt same 512 B on a policy without log.http"] = _ns_per_packet(
        kernel["ht-plain"], "prog_tc_egress", request_frame((base + pad)[:508] + b"\r\n\r\n"))
    figures["ns/pkt tcp ack, port 80, no payload"] = _ns_per_packet(
        kernel["ht-large"], "prog_tc_egress", frame(tcp_segment(b"", flags=0x10)))
    figures["ns/pkt tcp 512 B to port 443 (not an HTTP port)"] = _ns_per_packet(
        kernel["ht-large"], "prog_tc_egress", request_frame((base + pad)[:512], dport=443))
    for key, value in figures.items():
        record_property(key, value)
    print(json.dumps(figures, indent=1))
    small = figures["ns/pkt http request 128 B (max_bytes 2048)"]
    large = figures["ns/pkt http request 2048 B (max_bytes 2048)"]
    assert large > small    # the scan is per byte: a sanity check that it ran at all
