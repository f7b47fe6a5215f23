"""Big-list plumbing without a kernel: prefix parsing, packing, deltas and live-edit overlays."""

import ast
import errno
import importlib
import ipaddress
import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.bpfleet.core.plugins.module_utils import (
    _blocklist,
    _live_edits,
    _maps,
    _packing,
    _policy,
    _prefixes,
)
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf


def reference(text):
    """The standard library's verdict: (version, value) or None."""
    if "%" in text:
        return None
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    return network.version, int(network.network_address) << 8 | network.prefixlen


def fast(text):
    try:
        return _prefixes.parse(text)
    except _prefixes.PrefixError:
        return None


@pytest.mark.parametrize("text", [
    "10.0.0.0/8", "10.0.0.1", "0.0.0.0/0", "255.255.255.255/32", "01.2.3.4/32", "1.2.3.4/08", "1.2.3.4/ 8",
    "1.2.3.0/24 ", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4/255.255.255.255",
    "1.2.3.0/255.255.255.0", "1.2.3.4/+8", "2001:db8::/32", "2001:db8::1", "2001:db8::/129", "::/0",
    "::ffff:1.2.3.4/128", "fe80::1%eth0", "2001:db8:0:0:0:0:0:0/32", "2001:DB8::/32", "1.2.3.4/٨", "", "/",
    "1.2.3.4/", "10.0.0.1/24",
])
def test_parse_agrees_with_ipaddress(text):
    assert fast(text) == reference(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdef.:/ ", max_size=24))
def test_parse_agrees_with_ipaddress_on_junk(text):
    assert fast(text) == reference(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 32))
def test_ipv4_texts_are_canonical(address, length):
    network = ipaddress.ip_network((address, length), strict=False)
    version, value = _prefixes.parse(str(network))
    assert _prefixes.to_text(value, version) == str(network)
    assert _prefixes.texts([value], version) == [str(network)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 128 - 1), st.integers(0, 128))
def test_ipv6_texts_are_canonical(address, length):
    network = ipaddress.IPv6Network((address, length), strict=False)
    version, value = _prefixes.parse(str(network))
    assert version == 6
    assert _prefixes.to_text(value, 6) == str(network)


def test_host_bits_error_names_the_network_meant():
    with pytest.raises(_prefixes.PrefixError) as caught:
        _prefixes.parse("10.0.0.1/24")
    assert str(caught.value) == "host bits set in 10.0.0.1/24 (did you mean 10.0.0.0/24?)"
    assert caught.value.suggestion == "10.0.0.0/24"


def test_parse_lines_skips_comments_and_reports_line_numbers():
    v4, v6 = [], []
    failures = _prefixes.parse_lines(["# head", "", "10.0.0.0/8  # why", "  2001:db8::/32", "bad", "1.2.3.4/24"],
                                     v4, v6)
    assert [_prefixes.to_text(v, 4) for v in v4] == ["10.0.0.0/8"]
    assert [_prefixes.to_text(v, 6) for v in v6] == ["2001:db8::/32"]
    assert [(number, text) for number, text, _exc in failures] == [(5, "bad"), (6, "1.2.3.4/24")]


def test_scan_finds_duplicates_and_entries_inside_wider_ones():
    texts = ["10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/16", "10.1.2.0/24", "11.0.0.0/8", "11.0.0.0/8"]
    values = sorted(_prefixes.parse(t)[1] for t in texts)
    duplicates, inside = _prefixes.scan(values, 4)
    assert [_prefixes.to_text(v, 4) for v in duplicates] == ["10.1.0.0/16", "11.0.0.0/8"]
    assert [(_prefixes.to_text(n, 4), _prefixes.to_text(w, 4)) for n, w in inside] == [
        ("10.1.0.0/16", "10.0.0.0/8"), ("10.1.2.0/24", "10.0.0.0/8")]
    assert len(_prefixes.unique(values)) == 4


def test_list_file_errors_and_duplicates_name_file_and_line():
    files = {"big.txt": "10.0.0.0/24\n10.0.0.300/24\n# c\n10.0.0.0/24\n"}
    raw = {"name": "edge", "interfaces": ["eth0"], "filter": {"deny": ["10.0.0.0/24", {"file": "big.txt"}]}}
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, "edge.yml", read_file=files.__getitem__)
    assert caught.value.problems == ["edge.yml: filter.deny[1] (big.txt line 2): not an IP network: 10.0.0.300/24"]
    files["big.txt"] = "10.0.0.0/24\n\n10.0.0.0/24\n"
    _model, warnings = _policy.validate(raw, "edge.yml", read_file=files.__getitem__)
    assert warnings == ["edge.yml: filter.deny[1] (big.txt line 1): duplicate of filter.deny[0]",
                        "edge.yml: filter.deny[1] (big.txt line 3): duplicate of filter.deny[0]"]


def random_values(rnd, version, count):
    bits = 32 if version == 4 else 128
    found = set()
    while len(found) < count:
        length = rnd.choice([8, 16, 24, bits] if version == 4 else [32, 48, 64, bits])
        address = rnd.getrandbits(bits) >> (bits - length) << (bits - length)
        found.add(address << 8 | length)
    return sorted(found)


@pytest.mark.parametrize("version", [4, 6])
def test_pack_round_trip_gives_the_kernel_keys(version):
    rnd = random.Random(version)
    values = random_values(rnd, version, 500)
    packed = _packing.pack(values, version, 1)
    assert packed["count"] == 500
    unpacked = _packing.PackedList.from_transfer(packed)
    texts = [_prefixes.to_text(v, version) for v in values]
    assert unpacked.key_list() == [_maps.encode_lpm_key(t) for t in texts]
    assert [_maps.decode_lpm_key(k) for k in unpacked.key_list()] == texts
    assert unpacked.value() == _maps.encode_value(1)


def test_packed_lists_are_compact_and_damage_is_detected():
    values = random_values(random.Random(1), 4, 100000)
    packed = _packing.pack(values, 4, 1)
    as_json_strings = sum(len(_prefixes.to_text(v, 4)) + 3 for v in values)
    assert len(packed["data"]) < as_json_strings / 2
    damaged = dict(packed, digest="sha256:" + "0" * 64)
    with pytest.raises(_packing.PackingError, match="do not match their digest"):
        _packing.PackedList.from_transfer(damaged, "deny_v4")
    with pytest.raises(_packing.PackingError, match="format"):
        _packing.PackedList.from_transfer({"format": 99}, "deny_v4")
    stripped = {"deny_v4": dict(packed)}
    _packing.strip_data(stripped)
    assert stripped["deny_v4"]["data"].endswith("not echoed)")


@pytest.mark.parametrize("version", [4, 6])
def test_matches_agrees_with_brute_force(version):
    rnd = random.Random(10 + version)
    values = random_values(rnd, version, 300)
    packed = _packing.PackedList.from_transfer(_packing.pack(values, version, 1))
    networks = [ipaddress.ip_network(_prefixes.to_text(v, version)) for v in values]
    bits = 32 if version == 4 else 128
    probes = [v >> 8 | rnd.getrandbits(bits - (v & 0xFF)) if (v & 0xFF) < bits else v >> 8 for v in values[:50]]
    probes += [rnd.getrandbits(bits) for _index in range(50)]
    for address in probes:
        expected = sorted((int(n.network_address), n.prefixlen) for n in networks
                          if ipaddress.ip_address(address) in n)
        assert sorted(packed.matches(address)) == expected


def keys(*texts):
    return [_maps.encode_lpm_key(t) for t in texts]


def test_delta_of_packed_lists():
    value = _maps.encode_value(1)
    live = (keys("10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"), value + _maps.encode_value(2) + value)
    upsert, remove = _maps.delta(live, keys("10.0.0.0/8", "11.0.0.0/8", "13.0.0.0/8"), value)
    assert sorted(_maps.decode_lpm_key(k) for k in upsert) == ["11.0.0.0/8", "13.0.0.0/8"]  # wrong value, missing
    assert upsert.value == value
    assert [_maps.decode_lpm_key(k) for k in remove] == ["12.0.0.0/8"]
    same = (keys("10.0.0.0/8"), value)
    assert _maps.delta(same, keys("10.0.0.0/8"), value) == ([], [])
    assert _maps.delta(([], b""), [], value) == ([], [])


def test_sample_texts_are_the_first_in_address_order():
    many = keys(*("10.0.%d.0/24" % i for i in range(200, 0, -1)))
    assert _maps.sample_texts(many, 3) == ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]


def test_live_edit_overlay_keeps_edits_and_prunes_what_the_policy_took_over():
    policy = keys("10.0.0.0/8", "11.0.0.0/8")
    edits = {"added": set(keys("11.0.0.0/8", "12.0.0.0/8")), "removed": set(keys("10.0.0.0/8", "99.0.0.0/8"))}
    desired, pruned = _live_edits.overlay(policy, edits)
    assert [_maps.decode_lpm_key(k) for k in desired] == ["11.0.0.0/8", "12.0.0.0/8"]
    assert pruned == {"added": set(keys("12.0.0.0/8")), "removed": set(keys("10.0.0.0/8"))}
    untouched, same = _live_edits.overlay(policy, {"added": set(), "removed": set()})
    assert untouched == policy and same == {"added": set(), "removed": set()}


def test_live_edit_record_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(_live_edits.paths, "STATE_ROOT", str(tmp_path))
    edits = _live_edits.empty()
    edits["deny_v4"]["added"] = set(keys("198.51.100.7/32", "10.0.0.0/8"))
    edits["deny_v6"]["removed"] = set(keys("2001:db8::/32"))
    _live_edits.write("edge", edits)
    assert _live_edits.read("edge") == edits
    document = _live_edits.document_of(edits)
    assert document["lists"]["deny_v4"]["added"] == ["10.0.0.0/8", "198.51.100.7/32"]
    assert _live_edits.counts("edge")["deny_v4"] == {"added": 2, "removed": 0}
    _live_edits.write("edge", _live_edits.empty())
    assert not (tmp_path / "edge" / "live_edits.json").exists()


def test_blocklist_entries_are_validated_with_paths():
    files = {"list.txt": "192.0.2.0/24\n192.0.2.300\n"}
    v4, v6, errors = _blocklist.parse_entries(["198.51.100.7", "198.51.100.7/32", "10.0.0.1/8", 7, "2001:db8::1"],
                                              "list.txt", files.__getitem__)
    assert [_prefixes.to_text(v, 4) for v in v4] == ["192.0.2.0/24", "198.51.100.7/32"]
    assert [_prefixes.to_text(v, 6) for v in v6] == ["2001:db8::1/128"]
    assert errors == ["entries[2]: host bits set in 10.0.0.1/8 (did you mean 10.0.0.0/8?)",
                      "entries[3]: not an IP network: 7",
                      "file (list.txt line 2): not an IP network: 192.0.2.300"]

    def missing(name):
        raise OSError("No such file or directory: %s" % name)

    errors = _blocklist.parse_entries(None, "missing.txt", missing)[2]
    assert errors[0].startswith("file: cannot read list file missing.txt")


def test_write_order_never_opens_a_gap_for_the_lists():
    deltas = {"deny_v4": (keys("10.0.0.0/8"), keys("11.0.0.0/8")),
              "allow_v4": (keys("12.0.0.1/32"), keys("13.0.0.1/32")),
              "deny_v6": ([], []), "allow_v6": ([], [])}
    steps = [(name, bool(upsert), bool(remove)) for name, upsert, remove in _maps.write_order(deltas)]
    assert steps == [("allow_v4", True, False), ("deny_v4", False, True), ("deny_v4", True, False),
                     ("allow_v4", False, True)]


def test_a_deny_prefix_replaced_by_a_wider_one_goes_only_after_the_wider_one_is_in():
    """Removing 10.0.0.0/24 before 10.0.0.0/16 is in would let 10.0.0.x through for a moment,
    though both lists deny it; a disjoint removal still goes first to free room."""
    deltas = {"deny_v4": (keys("10.0.0.0/16", "192.0.2.0/24"), keys("10.0.0.0/24", "198.51.100.0/24")),
              "deny_v6": (keys("2001:db8::/32"), keys("2001:db8:1::/48", "2001:db9::/48"))}
    steps = [(name, [_maps.decode_lpm_key(k) for k in upsert], [_maps.decode_lpm_key(k) for k in remove])
             for name, upsert, remove in _maps.write_order(deltas)]
    assert steps == [
        ("deny_v4", [], ["198.51.100.0/24"]),
        ("deny_v6", [], ["2001:db9::/48"]),
        ("deny_v4", ["10.0.0.0/16", "192.0.2.0/24"], []),
        ("deny_v4", [], ["10.0.0.0/24"]),
        ("deny_v6", ["2001:db8::/32"], []),
        ("deny_v6", [], ["2001:db8:1::/48"]),
    ]


@pytest.mark.parametrize("removed, added, overlaps", [
    ("10.0.0.0/24", "10.0.0.0/16", True),     # the new prefix covers the old one
    ("10.0.0.0/16", "10.0.3.0/24", True),     # the old prefix covers the new one
    ("10.0.0.0/24", "10.0.1.0/24", False),    # neighbours
    ("10.0.1.0/24", "10.0.0.0/24", False),
    ("0.0.0.0/0", "255.255.255.255/32", True),
    ("255.255.255.255/32", "0.0.0.0/0", True),
    ("2001:db8::/127", "2001:db8::1/128", True),
    ("2001:db8::2/127", "2001:db8::1/128", False),
])
def test_split_removals_finds_overlap_in_both_directions(removed, added, overlaps):
    upsert = keys(added, "172.16.0.0/12" if ":" not in added else "fd00::/8")
    free_first, after_upsert = _maps.split_removals(upsert, keys(removed))
    assert (after_upsert, free_first) == ((keys(removed), []) if overlaps else ([], keys(removed)))


def test_upserts_keep_address_order_for_the_kernel_and_the_sample():
    value = _maps.encode_value(1)
    desired = keys("10.0.0.0/8", "10.0.0.0/16", "10.1.0.0/16", "11.0.0.0/8", "200.0.0.0/8")
    live = (keys("10.1.0.0/16"), value)
    upsert, remove = _maps.delta(live, desired, value)
    assert upsert.ordered and [_maps.decode_lpm_key(k) for k in upsert] == [
        "10.0.0.0/8", "10.0.0.0/16", "11.0.0.0/8", "200.0.0.0/8"]
    assert _maps.sample_texts(upsert, 2) == ["10.0.0.0/8", "10.0.0.0/16"]
    assert remove == []
    merged, _pruned = _live_edits.overlay(keys("10.0.0.0/8", "12.0.0.0/8"),
                                          {"added": set(keys("11.0.0.0/8", "9.0.0.0/8")), "removed": set()})
    assert [_maps.decode_lpm_key(k) for k in merged] == ["9.0.0.0/8", "10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"]


PLUGINS = Path(__file__).resolve().parents[4] / "plugins"


def module_utils_references():
    """(file:line, module_utils module, attribute) for every `alias.name` in plugins/ where
    alias is a module imported from plugins.module_utils (`from ...module_utils import _maps as maps`)."""
    found = []
    for path in sorted(PLUGINS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("plugins.module_utils"):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                where = "%s:%d" % (path.relative_to(PLUGINS.parent), node.lineno)
                found.append((where, aliases[node.value.id], node.attr))
    return found


def test_the_host_modules_find_every_helper_they_call():
    """A renamed or lost helper fails here, not on a host in the middle of a rollout: every
    `_maps.x` (or `maps.x`, any module_utils module under any alias) that plugins/ uses exists."""
    references = module_utils_references()
    used_from_maps = {name for _where, module, name in references if module == "_maps"}
    # The list plumbing the policy, blocklist and facts code calls (not a vacuous pass).
    assert {"apply_delta", "delta", "describe_delta", "sample_texts"} <= used_from_maps, sorted(used_from_maps)
    missing = []
    for where, module, name in references:
        loaded = importlib.import_module("ansible_collections.bpfleet.core.plugins.module_utils." + module)
        if not hasattr(loaded, name):
            missing.append("%s: %s.%s" % (where, module, name))
    assert not missing, "plugins/ calls helpers that do not exist:\n" + "\n".join(missing)


def test_a_full_trie_takes_a_different_list_of_its_own_size():
    """A real LPM trie at capacity, replaced by a list that shares no prefix with it and
    narrows one (adding first would need 15 entries): the disjoint removals free room first."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("bpf(2) needs root on Linux")
    capacity = 8
    old = keys(*["198.51.100.%d/32" % i for i in range(capacity - 1)], "10.0.0.0/16")
    new = keys(*["203.0.113.%d/32" % i for i in range(capacity - 2)], "10.0.3.0/24")
    value = _maps.encode_value(1)
    fd = bpf.map_create(bpf.MAP_TYPE_LPM_TRIE, 8, 4, capacity, bpf.BPF_F_NO_PREALLOC, "bpfleet_test")
    try:
        _maps.apply_delta(fd, dict((key, value) for key in old), [])
        upsert, remove = _maps.delta(_maps.live_entries(fd, 8), dict((key, value) for key in new))
        steps = _maps.write_order({"deny_v4": (upsert, remove)})
        # The /16 stays until the /24 inside it is in; the seven disjoint /32s go first.
        assert [(len(up), [_maps.decode_lpm_key(k) for k in rm][-1:]) for _map, up, rm in steps] == [
            (0, ["198.51.100.6/32"]), (7, []), (0, ["10.0.0.0/16"])]
        with pytest.raises(OSError) as full:
            _maps.apply_delta(fd, {new[0]: value}, [])
        assert full.value.errno == errno.ENOSPC
        for _map, up, rm in steps:
            _maps.apply_delta(fd, up, rm)
        assert sorted(_maps.live_entries(fd, 8)) == sorted(new)
    finally:
        os.close(fd)
