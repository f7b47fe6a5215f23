# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP/1.x request headers from captured TCP payloads, with redaction (docs/logging-http.md).

Two users share this file, so the kernel and user space apply the same rules:

- the renderer (controller) turns the redaction rules into constants for the kernel scanner
  in bpf/include/bpfleet_http.h: kernel_name_hash() and kernel_tail_pattern();
- the agent (host) parses the payload of a record with RequestParser, keeps the configured
  headers and writes every value of a sensitive header or query parameter as "[REDACTED]",
  whatever the kernel did: the agent never trusts that a value was blanked.

Pure standard library, Python 3.9+. RequestParser never raises on any input and never puts
payload bytes into an exception or a log message: a payload it cannot read yields None.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from urllib.parse import unquote_to_bytes

REDACTED = "[REDACTED]"

# Redacted whatever the policy says (docs/logging-http.md). A policy adds to these lists; it
# cannot remove from them.
DEFAULT_REDACT_NAMES = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")
DEFAULT_REDACT_CONTAINING = ("token", "secret", "api-key", "apikey", "password")
DEFAULT_HEADERS = ("host", "user-agent", "content-type", "x-request-id")
DEFAULT_PORTS = (80,)
DEFAULT_MAX_BYTES = 512
MIN_MAX_BYTES = 64
MAX_MAX_BYTES = 2048
MAX_PORTS = 16
# The kernel compares the last KERNEL_TAIL_BYTES bytes of a name as one 64-bit word; a
# longer substring rule is matched there by its last 8 bytes (more names blanked, never fewer).
KERNEL_TAIL_BYTES = 8
MAX_SUBSTRING_LENGTH = 32
MIN_SUBSTRING_LENGTH = 3

# RFC 9110 section 5.1: field-name = token; tchar is below (the backtick written \x60 and the
# pipe escaped, so the pattern also reads right in the Markdown of the policy reference).
TOKEN_PATTERN = r"^[!#$%&'*+.^_\x60\|~0-9A-Za-z-]+$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_VERSION_RE = re.compile(br"^HTTP/1\.[0-9]$")
_METHOD_RE = re.compile(br"^[A-Z]{3,7}$")

# FNV-1a, 64 bit: the kernel hashes a normalized name byte by byte while it reads it.
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1

_BLANKS = b" \t"
# Lowercase ASCII, '_' read as '-', every byte over 0x7f read as 0x7f (names are ASCII tokens;
# the kernel's word compares rely on bytes below 0x80).
_NORMALIZED_BYTES = bytes(bytearray(
    byte + 32 if 65 <= byte <= 90 else 45 if byte == 95 else byte if byte < 0x80 else 0x7F
    for byte in range(256)))
_LINE_BREAKS = re.compile(br"\r\n|\r|\n")


def is_token(name):
    """True for a valid RFC 9110 field name (a token)."""
    return isinstance(name, str) and bool(_TOKEN_RE.fullmatch(name))


def normalize_name(name):
    """The form in which header and query parameter names are compared, in the kernel and
    here: ASCII lowercase, '_' read as '-', blanks removed (so 'X_Api_Key' and 'x-api-key'
    are one name, and 'Authorization :' is still 'authorization')."""
    if isinstance(name, str):
        name = name.encode("latin-1", "replace")
    return bytes(name).translate(_NORMALIZED_BYTES, _BLANKS)


def kernel_name_hash(name):
    """FNV-1a 64 of the normalized name: what the kernel compares exact names by."""
    value = FNV_OFFSET
    for byte in bytearray(normalize_name(name)):
        value = ((value ^ byte) * FNV_PRIME) & _U64
    return value


def kernel_tail_pattern(substring):
    """(mask, value) that the kernel compares the last bytes of a name with: a name contains
    the substring (or, for one over 8 bytes, its last 8 bytes) when (tail & mask) == value."""
    tail = normalize_name(substring)[-KERNEL_TAIL_BYTES:]
    mask = (1 << (8 * len(tail))) - 1
    return mask, int.from_bytes(tail, "big")


class RedactionRules(object):
    """Which names are sensitive: the defaults plus a policy's `redact` (exact names) and
    `redact_containing` (substrings)."""

    def __init__(self, names=(), containing=()):
        self.names = frozenset(normalize_name(n) for n in tuple(DEFAULT_REDACT_NAMES) + tuple(names or ()))
        self.containing = tuple(sorted(set(normalize_name(s) for s in
                                           tuple(DEFAULT_REDACT_CONTAINING) + tuple(containing or ()))))
        self._cache = {}

    def is_sensitive(self, name):
        """``name`` as bytes or str, in any case."""
        key = normalize_name(name)
        known = self._cache.get(key)
        if known is None:
            known = key in self.names or any(part in key for part in self.containing)
            if len(self._cache) < 4096:
                self._cache[key] = known
        return known


# --- the kernel scanner ---------------------------------------------------------------------
#
# bpf/include/bpfleet_http.h runs this automaton over the captured bytes, one table lookup per
# byte and no branch (the verifier then walks each byte once; docs/logging-http.md). It is
# defined here so the renderer emits its tables and the unit tests run the same automaton
# byte for byte (scan_like_the_kernel). Lines end at CR, LF or CRLF, as RequestParser splits them.

SCAN_STATES = (
    "METHOD", "TARGET", "QUERY_NAME", "QUERY_VALUE", "QUERY_SECRET", "VERSION",
    # At the start of a line, remembering what a continuation line (obs-fold) would continue
    # and whether the previous byte was a CR (an LF then completes the same line break).
    "LINE", "LINE_CR", "LINE_VALUE", "LINE_VALUE_CR", "LINE_SECRET", "LINE_SECRET_CR",
    "NAME", "VALUE", "SECRET", "DONE",
)
SCAN_CLASSES = ("OTHER", "LF", "CR", "SPACE", "TAB", "COLON", "QUESTION", "AMPERSAND", "EQUALS")
CLASS_OF_BYTE = {ord("\n"): "LF", ord("\r"): "CR", ord(" "): "SPACE", ord("\t"): "TAB", ord(":"): "COLON",
                 ord("?"): "QUESTION", ord("&"): "AMPERSAND", ord("="): "EQUALS"}
# Actions, in the order the kernel applies them to a byte.
SCAN_ACTIONS = (("RESET", 1), ("FEED", 2), ("DECIDE", 4), ("BLANK", 8), ("REQUEST_END", 16))
RESET, FEED, DECIDE, BLANK, REQUEST_END = (value for _name, value in SCAN_ACTIONS)
REQUEST_LINE_STATES = ("METHOD", "TARGET", "QUERY_NAME", "QUERY_VALUE", "QUERY_SECRET", "VERSION")
# The request line must end with this (and a digit) to be captured: a segment that merely
# starts with a method word is not a request.
VERSION_PREFIX = b" HTTP/1."
SCAN_WIDTH = 16                     # classes per state in the tables (a power of two)
_STATE = dict((name, index) for index, name in enumerate(SCAN_STATES))
_CLASS = dict((name, index) for index, name in enumerate(SCAN_CLASSES))


def _scanner_transitions():
    """{(state, class): (next state, actions)} by name, for every state and class."""
    table = {}
    line_breaks = {"VALUE": ("LINE_VALUE", "LINE_VALUE_CR"), "SECRET": ("LINE_SECRET", "LINE_SECRET_CR")}
    for state in SCAN_STATES:
        for cls in SCAN_CLASSES:
            table[(state, cls)] = (state, 0)
        lf, cr = line_breaks.get(state, ("LINE", "LINE_CR"))
        ends = REQUEST_END if state in REQUEST_LINE_STATES else 0
        table[(state, "LF")] = (lf, ends)
        table[(state, "CR")] = (cr, ends)
    # The request line: METHOD SP target SP version; '?' opens the query, '&' separates
    # parameters, '=' ends a parameter name: its value is blanked when the name is sensitive
    # (DECIDE adds 1 to QUERY_VALUE, giving QUERY_SECRET).
    table[("METHOD", "SPACE")] = ("TARGET", 0)
    table[("TARGET", "QUESTION")] = ("QUERY_NAME", RESET)
    table[("TARGET", "SPACE")] = ("VERSION", 0)
    for cls in ("OTHER", "COLON", "QUESTION"):
        table[("QUERY_NAME", cls)] = ("QUERY_NAME", FEED)
    table[("QUERY_NAME", "EQUALS")] = ("QUERY_VALUE", DECIDE)
    for state in ("QUERY_NAME", "QUERY_VALUE", "QUERY_SECRET"):
        table[(state, "AMPERSAND")] = ("QUERY_NAME", RESET)
        table[(state, "SPACE")] = ("VERSION", 0)
    for cls in ("OTHER", "TAB", "COLON", "QUESTION", "EQUALS"):
        table[("QUERY_SECRET", cls)] = ("QUERY_SECRET", BLANK)
    # Header lines: the name up to ':' (blanks skipped), then the value, blanked when the
    # name is sensitive (DECIDE adds 1 to VALUE, giving SECRET).
    for cls in ("OTHER", "QUESTION", "AMPERSAND", "EQUALS"):
        table[("NAME", cls)] = ("NAME", FEED)
    table[("NAME", "COLON")] = ("VALUE", DECIDE)
    for cls in ("OTHER", "SPACE", "TAB", "COLON", "QUESTION", "AMPERSAND", "EQUALS"):
        table[("SECRET", cls)] = ("SECRET", BLANK)
    # At a line start: a line break is the blank line that ends the headers (except the LF of
    # a CRLF), a blank continues the previous value (obs-fold), anything else starts a name.
    for start, fold in (("LINE", None), ("LINE_VALUE", "VALUE"), ("LINE_SECRET", "SECRET")):
        for state in (start, start + "_CR"):
            table[(state, "CR")] = ("DONE", 0)
            table[(state, "LF")] = (start, 0) if state.endswith("_CR") else ("DONE", 0)
            for cls in ("SPACE", "TAB"):
                if fold is None:
                    table[(state, cls)] = ("NAME", RESET)
                else:
                    table[(state, cls)] = (fold, BLANK if fold == "SECRET" else 0)
            for cls in ("OTHER", "QUESTION", "AMPERSAND", "EQUALS"):
                table[(state, cls)] = ("NAME", RESET | FEED)
            table[(state, "COLON")] = ("VALUE", RESET | DECIDE)
    for cls in SCAN_CLASSES:
        table[("DONE", cls)] = ("DONE", 0)
    return table


SCANNER_TRANSITIONS = _scanner_transitions()


def scanner_tables():
    """(byte class table[256], normalized byte table[256], next state table, action table):
    the tables the kernel loads, indexed by state * SCAN_WIDTH + class."""
    classes = [_CLASS[CLASS_OF_BYTE.get(byte, "OTHER")] for byte in range(256)]
    normalized = list(bytearray(_NORMALIZED_BYTES))
    next_states = [0] * (len(SCAN_STATES) * SCAN_WIDTH)
    actions = [0] * (len(SCAN_STATES) * SCAN_WIDTH)
    for (state, cls), (target, action) in SCANNER_TRANSITIONS.items():
        index = _STATE[state] * SCAN_WIDTH + _CLASS[cls]
        next_states[index] = _STATE[target]
        actions[index] = action
    return classes, normalized, next_states, actions


def scan_like_the_kernel(payload, rules):
    """What the kernel scanner hands over for a captured payload: (bytes with sensitive values
    blanked with '*', the length up to the end of the headers or None when not seen), or None
    when the kernel does not take it for a request (a request line that ends without
    " HTTP/1.x": the record then carries no payload).

    A byte-for-byte model of http_scan() in bpf/include/bpfleet_http.h with the rules of
    ``rules`` (RedactionRules), for the tests: exact names by their FNV-1a hash, substrings
    by the last 8 bytes of the name."""
    classes, normalized, next_states, actions = scanner_tables()
    # The kernel leaves the lowest bit of the hashes out of the comparison.
    name_hashes = set(kernel_name_hash(name) >> 1 for name in rules.names)
    tails = [kernel_tail_pattern(part) for part in rules.containing]
    done = _STATE["DONE"]
    out = bytearray(payload)
    state = _STATE["METHOD"]
    name_hash, tail, hit = FNV_OFFSET, 0, 0
    request_end, end = 0, None
    for index, byte in enumerate(bytearray(payload)):
        slot = state * SCAN_WIDTH + classes[byte]
        target, action = next_states[slot], actions[slot]
        if action & RESET:
            name_hash, tail, hit = FNV_OFFSET, 0, 0
        if action & FEED:
            lowered = normalized[byte]
            name_hash = ((name_hash ^ lowered) * FNV_PRIME) & _U64
            tail = ((tail << 8) | lowered) & _U64
            hit |= any(tail & mask == value for mask, value in tails)
        if action & DECIDE:
            target += 1 if hit or name_hash >> 1 in name_hashes else 0
        if action & BLANK:
            out[index] = ord("*")
        if action & REQUEST_END:
            request_end = index
        state = target
        if state == done:
            end = index + 1
            break
    if request_end and (request_end < len(VERSION_PREFIX) + 1 or
                        bytes(out[request_end - 9:request_end - 1]) != VERSION_PREFIX):
        return None
    return (bytes(out[:end]), end) if end is not None else (bytes(out), None)


def kernel_name_table(names):
    """(slot bits, multiplier, slots) of the kernel's table of exact sensitive names: the
    hash of each name sits in slot (hash * multiplier) >> (64 - bits), every slot holds at
    most one, empty slots hold 0. The multiplier is the first odd number from a fixed
    sequence that spreads the names without collision, so a policy always renders the same."""
    hashes = sorted(set(kernel_name_hash(name) for name in names))
    bits = 4
    while (1 << bits) < 2 * len(hashes):
        bits += 1
    while True:
        for attempt in range(1, 4096):
            multiplier = (0x9E3779B97F4A7C15 * attempt) & _U64 | 1
            slots = [0] * (1 << bits)
            for value in hashes:
                slot = ((value * multiplier) & _U64) >> (64 - bits)
                if slots[slot]:
                    break
                slots[slot] = value
            else:
                return bits, multiplier, slots
        bits += 1


def _text(raw):
    return raw.decode("utf-8", "replace")


def _redact_target(target, rules):
    """The request target with the value of every sensitive query parameter replaced.

    Parameter names are compared percent-decoded (the kernel compares them as sent), so
    `api%5Fkey=...` is caught here even though the kernel did not blank it."""
    path, mark, query = target.partition(b"?")
    if not mark:
        return _text(target)
    parts = []
    for parameter in query.split(b"&"):
        name, equals, _value = parameter.partition(b"=")
        if equals and (rules.is_sensitive(name) or rules.is_sensitive(_percent_decoded(name))):
            parts.append(_text(name) + "=" + REDACTED)
        else:
            parts.append(_text(parameter))
    return _text(path) + "?" + "&".join(parts)


def _percent_decoded(name):
    if b"%" not in name and b"+" not in name:
        return name
    return unquote_to_bytes(name.replace(b"+", b" "))


class RequestParser(object):
    """Callable ``parser(payload, truncated) -> dict or None`` for RecordDecoder.

    ``headers``: names to keep (any case); ``redact``, ``redact_containing``: rules added to
    the defaults. The result is ``{"method", "path", "version", "headers", "truncated"}``;
    ``headers`` maps lowercase names to values, sensitive ones (whether listed in
    ``headers`` or not) to "[REDACTED]". None when the payload does not start with an
    HTTP/1.x request line.
    """

    def __init__(self, headers=DEFAULT_HEADERS, redact=(), redact_containing=()):
        self.keep = frozenset(normalize_name(name) for name in (headers or ()))
        self.rules = RedactionRules(redact, redact_containing)

    @classmethod
    def from_config(cls, config):
        """From the `http` part of a policy's log settings in state.json; None when the
        configuration is not a mapping. Unknown keys are ignored (a newer controller)."""
        if not isinstance(config, dict):
            return None

        def names(key, default=()):
            value = config.get(key, default)
            if not isinstance(value, (list, tuple)):
                return tuple(default)
            return tuple(item for item in value if isinstance(item, str))

        return cls(names("headers", DEFAULT_HEADERS), names("redact"), names("redact_containing"))

    def __call__(self, payload, truncated=False):
        try:
            return self._parse(bytes(payload), bool(truncated))
        except Exception:
            # Never let a payload take the record down or show up in a traceback.
            return None

    def _parse(self, payload, truncated):
        lines = _LINE_BREAKS.split(payload)
        # The last piece is a whole line only when the payload ends with a line break.
        complete = len(lines) > 1
        request_line = lines[0]
        parts = request_line.split(b" ")
        if not complete:
            # Cut inside the request line: what is there, marked truncated.
            if not truncated or not _METHOD_RE.match(parts[0]) or len(parts) > 3:
                return None
            target = parts[1] if len(parts) > 1 else b""
            return {"method": _text(parts[0]), "path": _redact_target(target, self.rules) if target else None,
                    "version": None, "headers": {}, "truncated": True}
        if len(parts) != 3 or not _METHOD_RE.match(parts[0]) or not _VERSION_RE.match(parts[2]):
            return None
        headers = {}
        ended = False
        previous = None          # (key, sensitive) of the header a continuation line extends
        last_index = len(lines) - 1
        for index in range(1, len(lines)):
            line = lines[index]
            if not line:
                if index < last_index:
                    ended = True
                    break
                continue            # the empty piece after a final line break
            if line[:1] in (b" ", b"\t"):
                # obs-fold: this line continues the previous header's value.
                if previous is not None:
                    key, sensitive = previous
                    if key in headers and not sensitive:
                        headers[key] = (headers[key] + " " + _text(line.strip(_BLANKS))).strip()
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                previous = None     # not a header line (or a name cut by the capture)
                continue
            key = _text(name.strip(_BLANKS)).lower()
            sensitive = self.rules.is_sensitive(name)
            previous = (key, sensitive)
            if sensitive:
                headers[key] = REDACTED
            elif normalize_name(name) in self.keep:
                text = _text(value.strip(_BLANKS))
                headers[key] = headers[key] + ", " + text if key in headers else text
        return {
            "method": _text(parts[0]),
            "path": _redact_target(parts[1], self.rules),
            "version": _text(parts[2]),
            "headers": headers,
            "truncated": truncated or not ended,
        }
