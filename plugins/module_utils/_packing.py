# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compact form of the list maps for the trip from the controller to the host.

A million prefixes as JSON strings in the module arguments cost tens of megabytes and
seconds of encoding and decoding on both sides. A list travels instead as one string:
base64 of zlib of the prefix lengths (one byte each) followed by the addresses (4 or 16
bytes each, network order), sorted by address and then length. The host rebuilds the
kernel's LPM keys from it with a few slice assignments, and a sha256 of the uncompressed
bytes makes a damaged transfer fail loudly instead of filling a map with garbage.

Standard library only: the same file runs on the controller and on the hosts (Python 3.9+).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import base64
import hashlib
import struct
import sys
import zlib

FORMAT = 1
_U32 = struct.Struct("=I")  # the kernel reads the prefix length in host order

# array type codes with 4-byte items (the C int of every Linux ABI).
_U32_CODE = "I" if array.array("I").itemsize == 4 else "L"


class PackingError(ValueError):
    pass


def address_bytes(version):
    return 4 if version == 4 else 16


def pack(values, version, rule):
    """The transfer form of one list: `values` are sorted prefix ints (_prefixes)."""
    lengths = bytes(bytearray(value & 0xFF for value in values))
    if version == 4:
        addresses = array.array(_U32_CODE, [value >> 8 for value in values])
        if sys.byteorder == "little":
            addresses.byteswap()
        addresses = addresses.tobytes()
    else:
        addresses = b"".join((value >> 8).to_bytes(16, "big") for value in values)
    payload = lengths + addresses
    return {
        "format": FORMAT,
        "family": version,
        "count": len(values),
        "rule": rule,
        "digest": "sha256:" + hashlib.sha256(payload).hexdigest(),
        # Level 1: sorted addresses compress about 2:1 already, and level 9 costs 10x the time.
        "data": base64.b64encode(zlib.compress(payload, 1)).decode("ascii"),
    }


class PackedList:
    """One list map's desired content on the host: sorted prefixes and their rule id."""

    def __init__(self, version, lengths, addresses, rule):
        self.version = version
        self.width = address_bytes(version)
        self.lengths = lengths
        self.addresses = addresses
        self.rule = rule
        self.count = len(lengths)
        self.key_size = 4 + self.width

    @classmethod
    def from_transfer(cls, packed, what="list"):
        if not isinstance(packed, dict) or packed.get("format") != FORMAT:
            raise PackingError("%s: not a packed list of format %d (controller and host run different "
                               "bpfleet versions?)" % (what, FORMAT))
        version = packed["family"]
        count = packed["count"]
        try:
            payload = zlib.decompress(base64.b64decode(packed["data"]))
        except (ValueError, zlib.error) as exc:
            raise PackingError("%s: the packed entries do not decode: %s" % (what, exc)) from exc
        if "sha256:" + hashlib.sha256(payload).hexdigest() != packed["digest"]:
            raise PackingError("%s: the packed entries do not match their digest" % what)
        width = address_bytes(version)
        if len(payload) != count * (1 + width):
            raise PackingError("%s: %d bytes for %d entries" % (what, len(payload), count))
        return cls(version, payload[:count], payload[count:], packed["rule"])

    @classmethod
    def from_keys(cls, version, keys, rule):
        """From LPM keys (bytes each), sorted into the canonical order."""
        width = address_bytes(version)
        order = sorted((bytes(key[4:4 + width]), _U32.unpack_from(key)[0]) for key in keys)
        return cls(version, bytes(bytearray(length for _address, length in order)),
                   b"".join(address for address, _length in order), rule)

    def lpm_keys(self):
        """All entries as the kernel's LPM keys, packed: u32 prefix length (host order) + address."""
        size = self.key_size
        keys = bytearray(self.count * size)
        if sys.byteorder == "little":
            keys[0::size] = self.lengths
        else:
            keys[3::size] = self.lengths
        for offset in range(self.width):
            keys[4 + offset::size] = self.addresses[offset::self.width]
        return bytes(keys)

    def key_list(self):
        """The LPM keys one by one (bytes), in the canonical order."""
        keys = self.lpm_keys()
        size = self.key_size
        return [keys[start:start + size] for start in range(0, len(keys), size)]

    def value(self):
        return _U32.pack(self.rule)

    def _entry(self, index):
        start = index * self.width
        return int.from_bytes(self.addresses[start:start + self.width], "big"), self.lengths[index]

    def matches(self, address):
        """[(network address int, prefix length)] of every entry containing `address` (an int
        of this family), shortest first: a binary search per prefix length present."""
        bits = self.width * 8
        found = []
        for length in sorted(set(bytearray(self.lengths))):
            network = address >> (bits - length) << (bits - length) if length else 0
            low, high = 0, self.count
            target = (network, length)
            while low < high:
                middle = (low + high) // 2
                if self._entry(middle) < target:
                    low = middle + 1
                else:
                    high = middle
            if low < self.count and self._entry(low) == target:
                found.append(target)
        return found


def lpm_key(version, network, length):
    return _U32.pack(length) + network.to_bytes(address_bytes(version), "big")


def key_order(key):
    """Sort key of an LPM key: address, then prefix length (stored in host order before it)."""
    return bytes(key[4:]), _U32.unpack_from(key)[0]


def key_parts(key):
    """(network address int, prefix length) of an LPM key."""
    return int.from_bytes(bytes(key[4:]), "big"), _U32.unpack_from(key)[0]


class EditedList:
    """A PackedList with live edits laid over it: `added` and `removed` are sets of LPM keys."""

    def __init__(self, packed, added=(), removed=()):
        self.packed = packed
        self.version = packed.version
        self.added = set(added)
        self.removed = set(removed)

    def matches(self, address):
        bits = address_bytes(self.version) * 8
        found = [entry for entry in self.packed.matches(address)
                 if lpm_key(self.version, entry[0], entry[1]) not in self.removed]
        for key in self.added:
            network, length = key_parts(key)
            if address >> (bits - length) << (bits - length) == network and (network, length) not in found:
                found.append((network, length))
        return sorted(found, key=lambda entry: entry[1])


class KeySet:
    """A list map's entries as a set of LPM keys (bytes), for example the live map with an edit
    laid over it: matches() probes each prefix length (at most 33 or 129 set lookups)."""

    def __init__(self, version, keys):
        self.version = version
        self.keys = keys if isinstance(keys, (set, frozenset)) else set(keys)

    def matches(self, address):
        bits = address_bytes(self.version) * 8
        found = []
        for length in range(bits + 1):
            network = address >> (bits - length) << (bits - length) if length else 0
            if lpm_key(self.version, network, length) in self.keys:
                found.append((network, length))
        return found


def unpack_lists(lists):
    """{map name: PackedList} from the transfer form of rendered["lists"]."""
    return dict((name, PackedList.from_transfer(packed, name)) for name, packed in lists.items())


def strip_data(lists):
    """Replace the packed data by its size, in place: a module echoes its arguments back in
    `invocation`, and megabytes of base64 there help nobody."""
    for packed in (lists or {}).values():
        if isinstance(packed, dict) and isinstance(packed.get("data"), str):
            packed["data"] = "(%d characters, not echoed)" % len(packed["data"])
