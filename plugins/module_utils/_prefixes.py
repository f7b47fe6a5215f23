# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fast parsing of CIDR prefixes for lists of a million lines.

`ipaddress.ip_network()` costs about 40 us a call here, which makes a 1,000,000-line deny
list take most of a minute to validate. Canonical IPv4 text takes a regular expression and
integer arithmetic instead; everything else (IPv6, and every line the fast path does not
accept) goes through `ipaddress`, so the verdict and the error wording stay those of the
standard library.

A prefix is one int: `address << 8 | prefix length`. Sorting these ints orders by address,
then wider before narrower, which is the canonical order of the lists, and two prefixes of
one family are equal exactly when their ints are.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

V4_BITS = 32
V6_BITS = 128

# Prefix lengths as the exact texts allowed: a dict lookup refuses " 8", "+8" and "٨" alike.
_V4_LENGTHS = dict((str(length), length) for length in range(V4_BITS + 1))
_V6_LENGTHS = dict((str(length), length) for length in range(V6_BITS + 1))
_V4_HOST_MASKS = [(1 << (V4_BITS - length)) - 1 for length in range(V4_BITS + 1)]
_V6_HOST_MASKS = [(1 << (V6_BITS - length)) - 1 for length in range(V6_BITS + 1)]


class PrefixError(ValueError):
    """Not a usable prefix; `suggestion` holds the network meant when only host bits are set."""

    def __init__(self, message, suggestion=None):
        self.suggestion = suggestion
        super(PrefixError, self).__init__(message)


def _slow(text):
    if "%" in text:
        # ipaddress accepts an IPv6 scope id; a map prefix has none.
        raise PrefixError("not an IP network (a scope id has no meaning in a filter): %s" % text)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise PrefixError("host bits set in %s (did you mean %s?)" % (text, loose), str(loose)) from None
        raise PrefixError("not an IP network: %s" % text) from None
    return network.version, int(network.network_address) << 8 | network.prefixlen


def _fast(text):
    """(version, value), or None when the text needs the standard library's verdict.

    inet_pton() is as strict as ipaddress about addresses (four decimal parts without
    leading zeros for IPv4, no scope id), and costs a fraction of it.
    """
    address, slash, length = text.partition("/")
    if ":" in address:
        try:
            number = int.from_bytes(inet_pton(AF_INET6, address), "big")
        except (OSError, ValueError):
            return None
        length = _V6_LENGTHS.get(length) if slash else V6_BITS
        if length is None or number & _V6_HOST_MASKS[length]:
            return None
        return 6, number << 8 | length
    try:
        number = int.from_bytes(inet_pton(AF_INET, address), "big")
    except (OSError, ValueError):
        return None
    length = _V4_LENGTHS.get(length) if slash else V4_BITS
    if length is None or number & _V4_HOST_MASKS[length]:
        return None
    return 4, number << 8 | length


def parse(text):
    """(4 or 6, address << 8 | prefix length) of a CIDR text; raises PrefixError.

    A bare address means the host prefix (/32 or /128), as in `ipaddress`.
    """
    return _fast(text) or _slow(text)


def parse_lines(lines, v4, v6):
    """Parse list-file lines ('#' starts a comment, blank lines skipped) into the lists v4 and
    v6 of prefix ints; returns [(line number, text, PrefixError)] of the lines refused.

    The IPv4 fast path is inlined: this loop runs a million times for a big deny list.
    """
    failures = []
    lengths = _V4_LENGTHS
    masks = _V4_HOST_MASKS
    add4 = v4.append
    add6 = v6.append
    from_bytes = int.from_bytes
    for number, line in enumerate(lines, 1):
        if "#" in line:
            line = line.split("#", 1)[0]
        line = line.strip()
        if not line:
            continue
        address, slash, length = line.partition("/")
        try:
            value = from_bytes(inet_pton(AF_INET, address), "big")
            length = lengths[length] if slash else V4_BITS
            if value & masks[length]:
                raise ValueError(line)
            add4(value << 8 | length)
            continue
        except (OSError, ValueError, KeyError):
            pass
        try:
            version, value = parse(line)
        except PrefixError as exc:
            failures.append((number, line, exc))
            continue
        (add4 if version == 4 else add6)(value)
    return failures


def bits(version):
    return V4_BITS if version == 4 else V6_BITS


def split(value):
    """(address, prefix length) of a prefix int."""
    return value >> 8, value & 0xFF


def covers(wide, narrow, version):
    """Does the prefix `wide` contain the prefix `narrow` (same family)?"""
    wide_length = wide & 0xFF
    narrow_length = narrow & 0xFF
    if narrow_length < wide_length:
        return False
    shift = bits(version) - wide_length + 8
    return (wide >> shift) == (narrow >> shift)


def supernet(value, length, version):
    """The prefix of `length` bits that contains `value`."""
    address = value >> 8
    host = bits(version) - length
    return (address >> host << host) << 8 | length


def to_text(value, version):
    """Canonical text (the form `str(ipaddress.ip_network(...))` gives)."""
    address, length = value >> 8, value & 0xFF
    if version == 4:
        return "%s/%d" % (inet_ntop(AF_INET, address.to_bytes(4, "big")), length)
    text = inet_ntop(AF_INET6, address.to_bytes(16, "big"))
    if "." in text:  # inet_ntop writes IPv4-mapped forms as ::ffff:1.2.3.4, ipaddress does not
        text = str(ipaddress.IPv6Address(address))
    return "%s/%d" % (text, length)


def scan(sorted_values, version):
    """One pass over a sorted list: (duplicates, [(narrow, wide)] entries inside a wider one).

    A duplicate is listed once per extra copy; the unique list is `unique(sorted_values)`.
    """
    duplicates = []
    inside = []
    width = bits(version) + 8
    cover = previous = None
    cover_length = 0
    cover_top = shift = None
    for value in sorted_values:
        if value == previous:
            duplicates.append(value)
            continue
        previous = value
        if cover is not None and (value & 0xFF) >= cover_length and value >> shift == cover_top:
            inside.append((value, cover))
        else:
            cover = value
            cover_length = value & 0xFF
            shift = width - cover_length
            cover_top = value >> shift
    return duplicates, inside


def unique(sorted_values):
    """A sorted list without repeated values."""
    return [value for index, value in enumerate(sorted_values) if not index or value != sorted_values[index - 1]]


def texts(values, version):
    """Canonical texts of many prefixes (to_text, unrolled for IPv4)."""
    if version == 4:
        return ["%d.%d.%d.%d/%d" % (value >> 32, value >> 24 & 0xFF, value >> 16 & 0xFF, value >> 8 & 0xFF,
                                    value & 0xFF) for value in values]
    return [to_text(value, 6) for value in values]


def shadowed(deny_values, allow_values, version):
    """(deny, allow) pairs where a deny entry lies inside an allow entry (allow wins)."""
    allowed = set(allow_values)
    lengths = sorted(set(value & 0xFF for value in allowed))
    found = []
    if not lengths:
        return found
    for value in deny_values:
        length_here = value & 0xFF
        for length in lengths:
            if length > length_here:
                break
            wider = supernet(value, length, version)
            if wider in allowed:
                found.append((value, wider))
                break
    return found
