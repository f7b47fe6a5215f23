# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzzers for what packet senders control (docs/security.md, G3 and G4).

The tc loggers copy attacker-chosen bytes into ring-buffer records; the agent walks the ring
with `_records.LineEncoder` (fast path and `RecordDecoder`) and parses HTTP requests with
`_http.RequestParser`. These Hypothesis fuzzers feed them arbitrary bytes, ring spans built
from records with random headers, lengths, versions (records from a program of another
version) and payloads, and generated HTTP requests that carry secrets, and check:

- nothing raises (a crash of the agent is a denial of service on logging);
- every line is one JSON object on one line, ASCII only, with only the keys the policy asks
  for (no line and no key injected by packet bytes); HTTP header keys are configured names;
- every record is accounted for: lines + malformed == complete records not discarded;
- no secret from a redacted header, a redacted query parameter or a request body appears in
  any line, any exception message or any value the decoder returns (the grep-proof).

Bounded: BPFLEET_FUZZ_EXAMPLES examples per fuzzer (default 400; the unit stage runs them
in a few seconds each). Each fuzzer writes how many inputs it tried and how many crashed to
.tmp/fuzz/<fuzzer>.json (a crash also fails the test).
"""

import json
import os
import string
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.bpfleet.core.plugins.module_utils import _http, _records

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EXAMPLES = int(os.environ.get("BPFLEET_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

BUSY, DISCARD = 1 << 31, 1 << 30
FIELDS = ["action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip", "ttl", "len", "proto",
          "src_port", "dst_port", "tcp_flags", "http"]
KEPT_HEADERS = ["host", "user-agent", "x-request-id", "authorization", "cookie"]
HTTP_CONFIG = {"headers": KEPT_HEADERS, "redact": ["x-session"], "redact_containing": ["sig"], "ports": [80],
               "max_bytes": 512}
RULES = _http.RedactionRules(HTTP_CONFIG["redact"], HTTP_CONFIG["redact_containing"])
ALLOWED_KEYS = set(_records.ALWAYS_FIELDS) | set(FIELDS)
HTTP_KEYS = {"method", "path", "version", "headers", "truncated"}


class Tally:
    def __init__(self, name):
        self.name, self.inputs, self.crashes, self.started, self.last = name, 0, 0, None, None

    def run(self, function, *args):
        if self.started is None:
            self.started = time.monotonic()
        self.last = time.monotonic()
        self.inputs += 1
        if self.inputs % 1000 == 0:
            self.write()               # a long run that is stopped still says how far it got
        try:
            return function(*args)
        except Exception:
            self.crashes += 1
            raise

    def write(self):
        directory = os.path.join(REPO, ".tmp", "fuzz")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self.name + ".json"), "w") as handle:
            json.dump({"fuzzer": self.name, "inputs": self.inputs, "crashes": self.crashes,
                       "seconds": round((self.last or 0) - (self.started or 0), 2), "max_examples": EXAMPLES}, handle)


@pytest.fixture(scope="module")
def tallies():
    found = {}
    yield lambda name: found.setdefault(name, Tally(name))
    for tally in found.values():
        tally.write()


def _decoder():
    return _records.RecordDecoder(FIELDS, "h1", rule_names={"0": "default", "1": "deny"},
                                  iface_names={2: "eth0"}, http=HTTP_CONFIG)


def _check_lines(lines, secrets=()):
    for line in lines:
        assert isinstance(line, str) and "\n" not in line and "\r" not in line
        line.encode("ascii")                           # ensure_ascii: nothing else gets out
        record = json.loads(line)
        assert isinstance(record, dict) and set(record) <= ALLOWED_KEYS, sorted(record)
        assert list(record)[:4] == list(_records.ALWAYS_FIELDS)
        http = record.get("http")
        if http is not None:
            assert set(http) == HTTP_KEYS
            for name, value in http["headers"].items():
                # Kept names, plus sensitive ones that show the request had them (docs/logging-http.md).
                assert name in KEPT_HEADERS or RULES.is_sensitive(name), http["headers"]
                assert _http.is_token(name)
                if RULES.is_sensitive(name):
                    assert value == "[REDACTED]", http["headers"]
        for secret in secrets:
            assert secret not in line, (secret, line)


# --- record bodies and ring spans ------------------------------------------------------

def _record(version=1, payload=b"", claimed=None, flags=0, **fields):
    values = dict(ts=1_000_000_000, ifindex=2, pkt_len=60, dir=0, action=0, rule=0, vlan=0, eth_proto=0x0800,
                  src_mac=b"\x02" * 6, dst_mac=b"\x04" * 6, ip_ver=4, proto=6, ttl=64, tcp_flags=0x18,
                  src_port=40000, dst_port=80, src_ip=b"\xc0\x00\x02\x01" + b"\0" * 12,
                  dst_ip=b"\xc6\x33\x64\x01" + b"\0" * 12)
    values.update(fields)
    return _records.RECORD.pack(values["ts"], values["ifindex"], values["pkt_len"], values["dir"], values["action"],
                                values["rule"], values["vlan"], values["eth_proto"], values["src_mac"],
                                values["dst_mac"], values["ip_ver"], values["proto"], values["ttl"],
                                values["tcp_flags"], values["src_port"], values["dst_port"], values["src_ip"],
                                values["dst_ip"], len(payload) if claimed is None else claimed, flags,
                                version, values.get("rewrite", 0)) + payload


u8, u16, u32 = st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)

record_bodies = st.one_of(
    # A v1 record with every field random, and a random payload (claimed length may lie).
    st.builds(lambda ts, ifindex, pkt_len, d, a, rule, vlan, ip_ver, proto, ttl, flags, sport, dport, sip, dip,
              payload, lie, rflags: _record(1, payload, None if lie is None else lie, rflags, ts=ts, ifindex=ifindex,
                                            pkt_len=pkt_len, dir=d, action=a, rule=rule, vlan=vlan, ip_ver=ip_ver,
                                            proto=proto, ttl=ttl, tcp_flags=flags, src_port=sport, dst_port=dport,
                                            src_ip=sip, dst_ip=dip),
              st.integers(0, 2**64 - 1), u32, u32, u8, u8, u16, u16, st.sampled_from([0, 4, 6, 5, 255]), u8, u8, u8,
              u16, u16, st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
              st.binary(max_size=200), st.one_of(st.none(), u16), u8),
    # Another program version: other version bytes, other sizes.
    st.builds(lambda version, extra: _record(version) + extra, st.integers(0, 255).filter(lambda v: v != 1),
              st.binary(max_size=16)),
    st.builds(lambda cut: _record()[:cut], st.integers(0, _records.RECORD_SIZE - 1)),
    st.binary(max_size=300),
)


@st.composite
def ring_spans(draw):
    """(span, complete records not discarded): records with ring headers, 8-byte aligned, the
    last one possibly cut, busy or with a lying length."""
    parts, expected = [], 0
    for body in draw(st.lists(record_bodies, max_size=12)):
        kind = draw(st.sampled_from(["ok", "ok", "ok", "discard", "busy", "lie"]))
        length = len(body)
        if kind == "lie":
            length = draw(st.integers(0, 0x3FFFFFFF))
        header = length | (DISCARD if kind == "discard" else 0) | (BUSY if kind == "busy" else 0)
        record = struct.pack("<II", header, 0) + body
        record += b"\0" * (-len(record) % 8)
        parts.append((record, kind, length == len(body)))
    span = b"".join(part for part, _kind, _honest in parts)
    # Complete records before the first busy one (the walk stops there). A lying length (the
    # kernel writes ring headers, so only a kernel bug could) leaves only the invariants.
    for _part, kind, honest in parts:
        if not honest:
            return span, None
        if kind == "busy":
            break
        if kind in ("ok", "lie"):          # a "lie" that drew the true length is an honest record
            expected += 1
    if draw(st.booleans()) and span:
        span = span[:draw(st.integers(0, len(span)))]
        expected = None            # a cut span: only the invariants are checked
    return span, expected


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_line_encoder_arbitrary_bytes(tallies, span):
    tally = tallies("line_encoder_arbitrary_bytes")
    lines, consumed, malformed = tally.run(_records.LineEncoder(_decoder()).encode, span, 0)
    assert 0 <= consumed <= max(len(span), 0) + 7 and malformed >= 0
    _check_lines(lines)


@FUZZ
@given(ring_spans())
def test_fuzz_line_encoder_ring_spans(tallies, drawn):
    span, expected = drawn
    tally = tallies("line_encoder_ring_spans")
    encoder = _records.LineEncoder(_decoder())
    lines, consumed, malformed = tally.run(encoder.encode, span, 1_700_000_000 * 10**9)
    assert 0 <= consumed <= len(span) + 7
    _check_lines(lines)
    if expected is not None:
        # Every complete record is either a line or counted malformed: none vanishes.
        assert len(lines) + malformed == expected, (len(lines), malformed, expected)


@FUZZ
@given(st.lists(record_bodies, max_size=8))
def test_fuzz_record_decoder(tallies, bodies):
    tally = tallies("record_decoder")
    decoder = _decoder()
    result = tally.run(decoder.decode_batch, bodies, 0)
    assert len(result.records) + result.malformed == len(bodies)
    _check_lines([json.dumps(record, ensure_ascii=True, separators=(",", ":")) for record in result.records])
    for body in bodies:
        try:
            decoder.decode(body, 0)
        except _records.MalformedRecord as exc:
            # Reasons name sizes and versions, never payload bytes.
            assert all(word.isdigit() or word.isascii() for word in str(exc).split())
            assert len(str(exc)) < 120


@FUZZ
@given(st.binary(max_size=1200), st.booleans())
def test_fuzz_http_parser_arbitrary_bytes(tallies, payload, truncated):
    tally = tallies("http_parser_arbitrary_bytes")
    parser = _http.RequestParser.from_config(HTTP_CONFIG)
    result = tally.run(parser, payload, truncated)
    if result is not None:
        assert set(result) == HTTP_KEYS
        assert all(name in KEPT_HEADERS or RULES.is_sensitive(name) for name in result["headers"])
        text = json.dumps(result, ensure_ascii=True)
        assert "\n" not in text and "\r" not in text


# --- requests that carry secrets: the grep-proof ----------------------------------------------

secret_values = st.text(string.ascii_letters + string.digits, min_size=10, max_size=24).map(lambda s: "Zq" + s)
separators = st.sampled_from(["\r\n", "\n", "\r\n", "\r\n"])
name_case = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])
SENSITIVE_HEADERS = ["Authorization", "Cookie", "Proxy-Authorization", "X-Api-Key", "X-Auth-Token", "X-Session",
                     "X-Client-Secret", "X-Amz-Signature", "Set-Cookie", "X-Password"]
SENSITIVE_PARAMS = ["api_key", "apikey", "token", "access_token", "password", "client_secret", "sig", "api%5Fkey",
                    "Api-Key"]


@st.composite
def secret_requests(draw):
    """(request bytes, secrets): secrets in sensitive headers (also folded), query parameters
    and the body, mixed with harmless headers and injection attempts."""
    eol = draw(separators)
    secrets, encoded_names = [], []
    query = []
    for _index in range(draw(st.integers(0, 3))):
        secret = draw(secret_values)
        secrets.append(secret)
        param = draw(st.sampled_from(SENSITIVE_PARAMS))
        if "%" in param:
            encoded_names.append(secret)
        query.append("%s=%s" % (param, secret))
    if draw(st.booleans()):
        query.append("q=" + draw(st.text(string.ascii_letters + '"{}\\', max_size=10)))
    path = "/p" + ("?" + "&".join(query) if query else "")
    lines = ["%s %s HTTP/1.1" % (draw(st.sampled_from(["GET", "POST", "PUT"])), path),
             "Host: example.test"]
    for _index in range(draw(st.integers(0, 4))):
        name = draw(name_case)(draw(st.sampled_from(SENSITIVE_HEADERS)))
        secret = draw(secret_values)
        secrets.append(secret)
        if draw(st.booleans()):
            lines.append("%s: Bearer %s" % (name, secret))
        else:
            # obs-fold: the secret on a continuation line
            lines.append("%s: Bearer" % name)
            lines.append("%s%s" % (draw(st.sampled_from([" ", "\t"])), secret))
    if draw(st.booleans()):
        lines.append('X-Request-Id: 1", "injected": "yes\\u2028')
    if draw(st.booleans()):
        lines.append("User-Agent: a\x00b\xff")
    body_secret = draw(secret_values)
    secrets.append(body_secret)
    text = eol.join(lines) + eol + eol + "password=%s&token=%s" % (body_secret, body_secret)
    raw = text.encode("latin-1")
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(len(lines[0]) + 2, len(raw)))]
    return raw, secrets, encoded_names


def _outputs_of_one_record(raw, truncated):
    """Everything the agent derives from one HTTP record: its JSON line through the fast
    encoder, the decoder's dict, the parser's result, and any error message."""
    flags = _records.PAYLOAD_TRUNCATED if truncated else 0
    outputs = []
    body = _record(1, raw, flags=flags)
    span = struct.pack("<II", len(body), 0) + body
    span += b"\0" * (-len(span) % 8)
    lines, _consumed, malformed = _records.LineEncoder(_decoder()).encode(span, 0)
    outputs.extend(lines)
    assert len(lines) + malformed == 1
    try:
        outputs.append(json.dumps(_decoder().decode(body, 0), ensure_ascii=False))
    except _records.MalformedRecord as exc:
        outputs.append(str(exc))
    outputs.append(repr(_http.RequestParser.from_config(HTTP_CONFIG)(raw, truncated)))
    return lines, outputs


@FUZZ
@given(secret_requests(), st.booleans())
def test_fuzz_no_secret_reaches_any_output(tallies, drawn, truncated):
    raw, secrets, _encoded = drawn
    tally = tallies("http_secret_grep_proof")
    lines, outputs = tally.run(_outputs_of_one_record, raw, truncated)
    _check_lines(lines, secrets)
    joined = "\n".join(outputs)
    for secret in secrets:
        # Not even the first 8 characters of a secret a capture cut in two.
        assert secret[:8] not in joined, (secret, joined)


@FUZZ
@given(secret_requests())
def test_fuzz_kernel_redaction_model_leaves_no_secret_in_headers(tallies, drawn):
    """What the kernel puts in the ring (its Python model, checked byte for byte against the
    real program by test_http_kernel.py) holds no header or query secret either."""
    raw, secrets, encoded_names = drawn
    tally = tallies("kernel_model_secret_grep_proof")
    rules = _http.RedactionRules(HTTP_CONFIG["redact"], HTTP_CONFIG["redact_containing"])
    scanned = tally.run(_http.scan_like_the_kernel, raw, rules)
    if scanned is None:
        return
    data, end = scanned
    headers = data if end is None else data[:end]
    for secret in secrets[:-1]:                 # the last one is the body's: cut off at `end`
        if secret in encoded_names:
            continue                            # percent-encoded names: the agent redacts (docs/logging-http.md)
        assert secret.encode() not in headers, (secret, headers)
