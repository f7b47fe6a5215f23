# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decoding of header records v1 (docs/architecture.md) into JSON-ready dicts.

Pure and standard library only: no kernel access, so it is unit tested on its
own and shared by the agent (as a sibling copy) and by modules.

Configuration (requested fields, host name, rule and interface names) is
compiled once into a RecordDecoder; decoding a batch then costs one
``struct.unpack_from`` and the formatting of the requested fields per record.

Output keys, in this order, only the requested ones after the first four
(DESIGN.md section 4):
    ts host iface dir action rule src_mac dst_mac vlan ip_ver src_ip dst_ip
    ttl len proto src_port dst_port tcp_flags http
Values that do not apply are null: ``rule`` when no filter rule decided
(egress, rule id 0xffff), ``vlan`` when untagged, ``ip_ver``, IPs,
``ttl`` and ``proto`` for non-IP frames, ports unless TCP or UDP, ``tcp_flags``
unless TCP (an empty string for a TCP segment without flags). ``http`` appears
only when a payload parser is installed and returns something (see
parse_payload()).
"""

from __future__ import annotations

import collections
import json
import socket
import struct
import time

try:
    from . import _contract, _http
except ImportError:
    # The agent runs copies of these files as plain sibling modules.
    import _contract
    import _http

__all__ = [
    "RECORD", "RECORD_SIZE", "RECORD_VERSION",
    "ALWAYS_FIELDS", "OPTIONAL_FIELDS", "KEY_ORDER",
    "DecodeResult", "MalformedRecord", "RecordDecoder", "LineEncoder",
    "decode_batch", "boot_to_realtime_offset_ns", "format_timestamp_ns",
    "tcp_flags_text", "proto_name", "record_payload", "parse_payload",
]

# struct bpfleet_record, docs/architecture.md ("Header record v1").
RECORD = struct.Struct(_contract.RECORD_FORMAT)
RECORD_SIZE = RECORD.size
RECORD_VERSION = _contract.RECORD_VERSION
# Record flags (docs/architecture.md, docs/logging-http.md).
PAYLOAD_TRUNCATED = _contract.PAYLOAD_TRUNCATED
PAYLOAD_REDACTED = _contract.PAYLOAD_REDACTED
PAYLOAD_CUT = _contract.PAYLOAD_CUT

ALWAYS_FIELDS = ("ts", "host", "iface", "dir")
OPTIONAL_FIELDS = (
    "action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip",
    "ttl", "len", "proto", "src_port", "dst_port", "tcp_flags", "rewrite", "http",
)
KEY_ORDER = ALWAYS_FIELDS + OPTIONAL_FIELDS

DIRECTIONS = _contract.DIRECTIONS
ACTIONS = _contract.ACTIONS
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
_PORT_PROTOS = frozenset((6, 17))
_TCP = 6
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")   # bit 0 .. bit 7

# All 256 flag combinations, formatted once ("SYN|ACK").
_TCP_FLAGS_TEXT = tuple(
    "|".join(name for bit, name in enumerate(TCP_FLAG_NAMES) if value & (1 << bit))
    for value in range(256)
)

_NS_PER_S = 1000000000
# Rule id of records no filter rule decided (egress): written as null.
RULE_NONE = _contract.RULE_NONE


class DecodeResult(collections.namedtuple("DecodeResult", ("records", "malformed"))):
    """``records``: list of dicts; ``malformed``: how many inputs were rejected."""
    __slots__ = ()


class MalformedRecord(ValueError):
    """A record that is too short, of an unknown version, or whose payload
    length points past its end."""


def tcp_flags_text(flags):
    """"SYN|ACK" for 0x12; "" for no flags."""
    return _TCP_FLAGS_TEXT[flags & 0xFF]


def proto_name(proto):
    """"tcp", "udp", "icmp", "icmpv6", or the protocol number itself."""
    return PROTO_NAMES.get(proto, proto)


def boot_to_realtime_offset_ns():
    """Nanoseconds to add to a CLOCK_BOOTTIME stamp (bpf_ktime_get_boot_ns) to get
    UNIX time. Sample it per batch: NTP slews the wall clock over time."""
    # Read the boot clock between two wall clock reads and take the midpoint,
    # so the offset error is at most half the time between them.
    before = time.time_ns()
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    after = time.time_ns()
    return (before + after) // 2 - boot


def format_timestamp_ns(unix_ns):
    """RFC 3339 UTC with nanoseconds: 2026-11-23T17:00:00.123456789Z."""
    seconds, nanoseconds = divmod(unix_ns, _NS_PER_S)
    return "%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)), nanoseconds)


def record_payload(raw):
    """The captured payload bytes after the fixed part of a raw record, and
    whether the kernel truncated them: ``(bytes, truncated)``."""
    payload_length, flags = struct.unpack_from("<HB", raw, RECORD_SIZE - 12)
    return bytes(raw[RECORD_SIZE:RECORD_SIZE + payload_length]), bool(flags & PAYLOAD_TRUNCATED)


def parse_payload(payload, truncated, http=None):
    """The ``http`` value of a payload under the `log.http` settings ``http``
    (as in state.json; None: the defaults), or None when it is not an HTTP/1.x
    request. Long-lived callers give RecordDecoder(http=...) instead, which
    builds the parser (_http.RequestParser) once."""
    parser = _http.RequestParser.from_config(http if http is not None else {})
    return parser(payload, truncated)


class RecordDecoder(object):
    """Decoder for one policy's log configuration.

    ``fields``: requested optional keys (unknown names are ignored and listed in
    ``unknown_fields``, so a newer controller cannot break an older agent);
    ``host``: the host name written in every record; ``rule_names``: rule id ->
    name (keys int or str, as in state.json); ``iface_names``: ifindex -> name
    mapping (a dict subclass with ``__missing__`` may resolve lazily; unknown
    indexes otherwise become their number as a string); ``http``: the policy's
    `log.http` settings from state.json, which install _http.RequestParser for
    the ``http`` key; ``payload_parser``: any other
    ``f(payload, truncated) -> value or None`` for that key.
    """

    def __init__(self, fields, host, rule_names=None, iface_names=None, payload_parser=None, http=None):
        requested = set(fields or ())
        self.fields = tuple(name for name in OPTIONAL_FIELDS if name in requested)
        self.unknown_fields = tuple(sorted(requested - set(KEY_ORDER)))
        self.host = host
        self.rule_names = {}
        for rule_id, name in (rule_names or {}).items():
            self.rule_names[int(rule_id)] = name
        self.iface_names = iface_names if iface_names is not None else {}
        if payload_parser is None and http is not None:
            payload_parser = _http.RequestParser.from_config(http)
        self.payload_parser = payload_parser
        # Timestamp formatting is the costliest part of a record: records of a
        # batch mostly share their second, so the "YYYY-MM-DDTHH:MM:SS" prefix
        # is computed once per second.
        self._cached_second = None
        self._cached_prefix = ""

    def decode_batch(self, raw_records, boot_to_realtime_ns):
        """Decode raw ring-buffer payloads; never raises for bad records, counts them.

        ``boot_to_realtime_ns``: see boot_to_realtime_offset_ns().
        """
        decoded = []
        append = decoded.append
        malformed = 0
        unpack_from = RECORD.unpack_from
        want = set(self.fields)
        want_action = "action" in want
        want_rule = "rule" in want
        want_src_mac = "src_mac" in want
        want_dst_mac = "dst_mac" in want
        want_vlan = "vlan" in want
        want_ip_ver = "ip_ver" in want
        want_src_ip = "src_ip" in want
        want_dst_ip = "dst_ip" in want
        want_ttl = "ttl" in want
        want_len = "len" in want
        want_proto = "proto" in want
        want_src_port = "src_port" in want
        want_dst_port = "dst_port" in want
        want_tcp_flags = "tcp_flags" in want
        want_rewrite = "rewrite" in want
        want_http = "http" in want and self.payload_parser is not None
        host = self.host
        iface_names = self.iface_names
        rule_names = self.rule_names
        payload_parser = self.payload_parser
        directions = DIRECTIONS
        actions = ACTIONS
        flags_text = _TCP_FLAGS_TEXT
        proto_names = PROTO_NAMES
        port_protos = _PORT_PROTOS
        inet_ntop = socket.inet_ntop
        af_inet = socket.AF_INET
        af_inet6 = socket.AF_INET6
        cached_second = self._cached_second
        cached_prefix = self._cached_prefix
        gmtime = time.gmtime
        strftime = time.strftime

        for raw in raw_records:
            if len(raw) < RECORD_SIZE:
                malformed += 1
                continue
            (ts_boot_ns, ifindex, pkt_len, direction, action, rule, vlan, _eth_proto,
             src_mac, dst_mac, ip_ver, proto, ttl, tcp_flags, src_port, dst_port,
             src_ip, dst_ip, payload_len, flags, version, rewrite) = unpack_from(raw)
            if version != RECORD_VERSION or RECORD_SIZE + payload_len > len(raw):
                malformed += 1
                continue

            second, nanosecond = divmod(ts_boot_ns + boot_to_realtime_ns, 1000000000)
            if second != cached_second:
                cached_second = second
                cached_prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(second))
            try:
                iface = iface_names[ifindex]
            except KeyError:
                iface = str(ifindex)
            record = {
                "ts": "%s.%09dZ" % (cached_prefix, nanosecond),
                "host": host,
                "iface": iface,
                "dir": directions[direction] if direction < 2 else str(direction),
            }
            if want_action:
                record["action"] = actions[action] if action < 3 else str(action)
            if want_rule:
                record["rule"] = (rule_names.get(rule) or str(rule)) if rule != RULE_NONE else None
            if want_src_mac:
                record["src_mac"] = src_mac.hex(":")
            if want_dst_mac:
                record["dst_mac"] = dst_mac.hex(":")
            if want_vlan:
                record["vlan"] = vlan or None
            is_ip = ip_ver == 4 or ip_ver == 6
            if want_ip_ver:
                record["ip_ver"] = ip_ver if is_ip else None
            if want_src_ip:
                record["src_ip"] = (inet_ntop(af_inet, src_ip[:4]) if ip_ver == 4 else
                                    inet_ntop(af_inet6, src_ip) if ip_ver == 6 else None)
            if want_dst_ip:
                record["dst_ip"] = (inet_ntop(af_inet, dst_ip[:4]) if ip_ver == 4 else
                                    inet_ntop(af_inet6, dst_ip) if ip_ver == 6 else None)
            if want_ttl:
                record["ttl"] = ttl if is_ip else None
            if want_len:
                record["len"] = pkt_len
            if want_proto:
                record["proto"] = proto_names.get(proto, proto) if is_ip else None
            has_ports = is_ip and proto in port_protos
            if want_src_port:
                record["src_port"] = src_port if has_ports else None
            if want_dst_port:
                record["dst_port"] = dst_port if has_ports else None
            if want_tcp_flags:
                record["tcp_flags"] = flags_text[tcp_flags] if is_ip and proto == _TCP else None
            if want_rewrite:
                record["rewrite"] = (rule_names.get(rewrite) or str(rewrite)) if rewrite else None
            if want_http and payload_len:
                try:
                    http = payload_parser(bytes(raw[RECORD_SIZE:RECORD_SIZE + payload_len]),
                                          bool(flags & PAYLOAD_TRUNCATED))
                except Exception:
                    # A parser bug must not lose the L3/L4 record; the record is
                    # written without its http part.
                    http = None
                if http is not None:
                    record["http"] = http
            append(record)

        self._cached_second = cached_second
        self._cached_prefix = cached_prefix
        return DecodeResult(decoded, malformed)

    def decode(self, raw, boot_to_realtime_ns):
        """Decode one record; raises MalformedRecord instead of counting it."""
        result = self.decode_batch((raw,), boot_to_realtime_ns)
        if result.malformed:
            raise MalformedRecord(_malformed_reason(raw))
        return result.records[0]


def _malformed_reason(raw):
    if len(raw) < RECORD_SIZE:
        return "record of %d bytes, the v1 layout has %d" % (len(raw), RECORD_SIZE)
    payload_len, _flags, version = struct.unpack_from("<HBB", raw, RECORD_SIZE - 12)
    if version != RECORD_VERSION:
        return "record version %d, this decoder knows %d" % (version, RECORD_VERSION)
    return "payload_len %d but only %d bytes follow the fixed part" % (payload_len, len(raw) - RECORD_SIZE)


def decode_batch(raw_records, fields, host, rule_names=None, iface_names=None,
                 boot_to_realtime_ns=0, payload_parser=None, http=None):
    """One-shot form of RecordDecoder(...).decode_batch(); long-lived callers
    (the agent) should keep a RecordDecoder per policy instead."""
    decoder = RecordDecoder(fields, host, rule_names, iface_names, payload_parser, http)
    return decoder.decode_batch(raw_records, boot_to_realtime_ns)


# --- JSON lines straight from ring-buffer bytes -------------------------------------------

# A ring-buffer slot of a record without payload: the kernel's 8-byte header (u32 length,
# u32 page offset) and the 88-byte record, grouped so that what stays the same for a flow
# comes out as two bytes objects: the ifindex, and offsets 16-75 (direction, action, rule,
# VLAN, MACs, IP version, protocol, TTL, TCP flags, ports, addresses). Time and length
# change per packet. The trailer (payload_len, flags, version, rewrite) must be 0, 0, 1, 0:
# a record of a rewritten packet takes the slow path (RecordDecoder).
_SLOT = struct.Struct("<I4xQ4sI60s6s6x")
_SLOT_SIZE = _SLOT.size                         # 96
_SLOT_TRAILER = b"\x00\x00\x00\x01\x00\x00"
_FLOW = struct.Struct("<BBHHH6s6sBBBBHH16s16s")
_HEADER = struct.Struct("<I")
_BUSY = 1 << 31
_DISCARD = 1 << 30
_LENGTH = ~(_BUSY | _DISCARD) & 0xFFFFFFFF
_U32_LE = struct.Struct("<I")
# Templates are cached per flow; a scan over many addresses must not grow memory forever.
TEMPLATE_CACHE_LIMIT = 65536


class LineEncoder(object):
    """JSON lines from a span of ring-buffer bytes, for the agent's hot loop.

    ``encode(span, boot_to_realtime_ns)`` walks the records of ``span`` (bytes copied from
    the ring buffer's data area, starting at a record header) and returns
    ``(lines, consumed, malformed)``: ``lines`` a list of JSON texts (no newline),
    ``consumed`` the bytes walked (it stops before a record still being written, so the
    caller releases exactly that much), ``malformed`` how many records were rejected.
    ``last_ts(lines)`` gives the time of the last line.

    Lines are byte-for-byte what ``json.dumps(record, separators=(",", ":"))`` gives for
    the dict RecordDecoder builds. Records without payload (all L3/L4 records) take the
    fast path: ``struct.iter_unpack`` over fixed 96-byte slots and, per flow (the bytes
    that do not change from packet to packet), a cached pair of JSON fragments around the
    time and the length, joined with one f-string. A record there costs about one tuple,
    one dict lookup and one string build; no dict, no json call. Records with payload
    (HTTP), discarded records and any other layout go through RecordDecoder one at a time.
    """

    def __init__(self, decoder):
        self.decoder = decoder
        self._json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode
        self._with_len = "len" in decoder.fields
        self._templates = {}
        self._base = None           # boot-clock ns at the start of the cached second
        self._prefix = ""

    def reset(self):
        """Forget cached fragments (interface or rule names changed)."""
        self._templates.clear()

    def _fragments(self, ifindex_bytes, flow):
        """(middle, tail): a line is '{"ts":"<second>.<ns>Z' + middle [+ len + tail]."""
        decoder = self.decoder
        dumps = self._json
        (ifindex,) = _U32_LE.unpack(ifindex_bytes)
        (direction, action, rule, vlan, _eth_proto, src_mac, dst_mac, ip_ver, proto, ttl, tcp_flags,
         src_port, dst_port, src_ip, dst_ip) = _FLOW.unpack(flow)
        try:
            iface = decoder.iface_names[ifindex]
        except KeyError:
            iface = str(ifindex)
        is_ip = ip_ver == 4 or ip_ver == 6
        has_ports = is_ip and proto in _PORT_PROTOS
        values = {
            "action": lambda: ACTIONS[action] if action < 3 else str(action),
            "rule": lambda: (decoder.rule_names.get(rule) or str(rule)) if rule != RULE_NONE else None,
            "src_mac": lambda: src_mac.hex(":"),
            "dst_mac": lambda: dst_mac.hex(":"),
            "vlan": lambda: vlan or None,
            "ip_ver": lambda: ip_ver if is_ip else None,
            "src_ip": lambda: _address_text(ip_ver, src_ip),
            "dst_ip": lambda: _address_text(ip_ver, dst_ip),
            "ttl": lambda: ttl if is_ip else None,
            "proto": lambda: PROTO_NAMES.get(proto, proto) if is_ip else None,
            "src_port": lambda: src_port if has_ports else None,
            "dst_port": lambda: dst_port if has_ports else None,
            "tcp_flags": lambda: _TCP_FLAGS_TEXT[tcp_flags] if is_ip and proto == _TCP else None,
            "rewrite": lambda: None,  # the fast path only takes records without a rewrite
        }
        parts = ['Z","host":', dumps(decoder.host), ',"iface":', dumps(iface),
                 ',"dir":', dumps(DIRECTIONS[direction] if direction < 2 else str(direction))]
        middle = None
        for name in decoder.fields:
            if name == "len":
                parts.append(',"len":')
                middle, parts = "".join(parts), []
            elif name in values:
                parts.append(',"%s":%s' % (name, dumps(values[name]())))
        parts.append("}")
        if middle is None:
            return "".join(parts), ""
        return middle, "".join(parts)

    def encode(self, span, boot_to_realtime_ns):
        lines = []
        append = lines.append
        templates = self._templates
        get_fragments = templates.get
        build = self._fragments
        with_len = self._with_len
        base = self._base
        prefix = self._prefix
        # The cached second is kept in boot-clock terms; a new offset (NTP) recomputes it.
        if base is not None and boot_to_realtime_ns != getattr(self, "_offset", None):
            base = None
        self._offset = boot_to_realtime_ns
        trailer_v1 = _SLOT_TRAILER
        size = len(span)
        view = memoryview(span)
        offset = 0
        malformed = 0
        while offset < size:
            slots = (size - offset) // _SLOT_SIZE
            if slots:
                before = len(lines)
                for (length, ts_boot, ifindex_bytes, pkt_len, flow,
                     trailer) in _SLOT.iter_unpack(view[offset:offset + slots * _SLOT_SIZE]):
                    if length != RECORD_SIZE or trailer != trailer_v1:
                        break
                    nanoseconds = ts_boot - base if base is not None else -1
                    if not 0 <= nanoseconds < 1000000000:
                        second = (ts_boot + boot_to_realtime_ns) // 1000000000
                        base = second * 1000000000 - boot_to_realtime_ns
                        prefix = '{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
                        nanoseconds = ts_boot - base
                    # Keyed by the flow bytes alone (no tuple to build and hash); the
                    # interface is checked, as the same flow on two interfaces is rare.
                    fragments = get_fragments(flow)
                    if fragments is None or fragments[0] != ifindex_bytes:
                        if len(templates) >= TEMPLATE_CACHE_LIMIT:
                            templates.clear()
                        fragments = templates[flow] = (ifindex_bytes,) + build(ifindex_bytes, flow)
                    if with_len:
                        append(f"{prefix}{nanoseconds:09d}{fragments[1]}{pkt_len}{fragments[2]}")
                    else:
                        append(f"{prefix}{nanoseconds:09d}{fragments[1]}")
                walked = len(lines) - before
                offset += walked * _SLOT_SIZE
                if walked == slots:
                    continue
            # One record the fast path does not take.
            if size - offset < 8:
                break
            header = _HEADER.unpack_from(span, offset)[0]
            if header & _BUSY:
                break
            end = offset + 8 + (header & _LENGTH)
            if end > size:
                break
            if not header & _DISCARD:
                result = self.decoder.decode_batch((span[offset + 8:end],), boot_to_realtime_ns)
                if result.malformed:
                    malformed += 1
                else:
                    append(self._json(result.records[0]))
            offset = (end + 7) & ~7
        self._base, self._prefix = base, prefix
        return lines, offset, malformed

    @staticmethod
    def last_ts(lines):
        """The "ts" of the last line (every line starts with {"ts":"<30 characters>")."""
        return lines[-1][7:37] if lines else None


def _address_text(ip_ver, address):
    if ip_ver == 4:
        return socket.inet_ntop(socket.AF_INET, address[:4])
    if ip_ver == 6:
        return socket.inet_ntop(socket.AF_INET6, address)
    return None
