"""Kernel feature probes (issue 13): the probe list covers what bpf/ uses, the header is
deterministic, masks and missing required features give clear messages.

The probes themselves run against the real kernel in test_kernel_features_probe() (root only)
and on every host through the policy module (tests/integration/test_kernel_features.py)."""

import os
import re

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _features

BPF_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "bpf")
# Byte-order macros of bpf_endian.h, not helpers.
NOT_HELPERS = {"bpf_htons", "bpf_ntohs", "bpf_htonl", "bpf_ntohl"}
# BCC's table methods and the helper each one compiles to.
TABLE_METHODS = {"lookup": "map_lookup_elem", "update": "map_update_elem", "ringbuf_output": "ringbuf_output",
                 "ringbuf_reserve": "ringbuf_reserve", "ringbuf_submit": "ringbuf_submit"}
MAP_TYPES = {"lpm_trie": "map_lpm_trie", "percpu_array": "map_percpu_array", "percpu_hash": "map_percpu_hash",
             "lru_hash": "map_lru_hash", "ringbuf": "map_ringbuf"}


def _bpf_sources():
    texts = []
    for root, _dirs, files in os.walk(BPF_DIR):
        for name in files:
            with open(os.path.join(root, name)) as handle:
                texts.append(handle.read())
    return "\n".join(texts)


def all_states(available=True):
    return dict((feature.name, {"available": available, "reason": "" if available else "absent"})
                for feature in _features.FEATURES)


def test_every_helper_the_programs_call_is_probed_for_both_program_types():
    source = _bpf_sources()
    called = set(re.findall(r"\b(bpf_[a-z0-9_]+)\s*\(", source)) - NOT_HELPERS
    called = set(name[len("bpf_"):] for name in called)
    called |= set(TABLE_METHODS[method] for method in re.findall(r"\.(\w+)\(", source) if method in TABLE_METHODS)
    assert called, "no helper calls found in bpf/: the scan is broken"
    for helper in sorted(called):
        assert helper in _features.HELPERS, "bpf/ calls bpf_%s, which no probe covers" % helper
        # xdp_adjust_meta only exists in XDP; every other helper is used by both hooks.
        types = ["xdp"] if helper.startswith("xdp_") else ["xdp", "sched_cls"]
        if helper.startswith("skb_") or helper == "l3_csum_replace":
            types = ["sched_cls"]
        for prog_type in types:
            assert "%s_in_%s" % (helper, prog_type) in _features.FEATURES_BY_NAME, (helper, prog_type)


def test_every_map_type_the_programs_create_is_probed():
    source = _bpf_sources()
    types = set(re.findall(r'BPF_TABLE_PINNED\("(\w+)"', source)) | {"ringbuf"}
    if re.search(r"BPF_PERCPU_ARRAY\(", source):
        types.add("percpu_array")
    for map_type in types:
        assert MAP_TYPES[map_type] in _features.FEATURES_BY_NAME, map_type


def test_header_is_deterministic_and_lists_each_macro_once():
    header = _features.header(all_states())
    assert header == _features.header(dict(reversed(list(all_states().items()))))
    macros = re.findall(r"#define (HAVE_\w+) (\d)", header)
    assert sorted(set(name for name, value in macros)) == sorted(name for name, value in macros)
    assert dict(macros) == {"HAVE_KTIME_GET_BOOT_NS": "1", "HAVE_XDP_ADJUST_META": "1"}


def test_a_shared_macro_is_on_only_when_every_program_type_has_the_helper():
    states = all_states()
    states["ktime_get_boot_ns_in_sched_cls"] = {"available": False, "reason": "absent"}
    assert "#define HAVE_KTIME_GET_BOOT_NS 0" in _features.header(states)
    assert _features.header_digest(_features.header(states)) != _features.header_digest(_features.header(all_states()))


def test_mask_switches_optional_features_off_and_refuses_required_or_unknown_ones():
    masked = _features.apply_mask(all_states(), ["xdp_adjust_meta_in_xdp"])
    assert masked["xdp_adjust_meta_in_xdp"] == {"available": False, "reason": "masked by mask_features"}
    assert "#define HAVE_XDP_ADJUST_META 0" in _features.header(masked)
    assert list(_features.fallbacks_in_use(masked)) == ["xdp_adjust_meta_in_xdp"]
    with pytest.raises(_features.MaskError, match="map_ringbuf is required"):
        _features.apply_mask(all_states(), ["map_ringbuf"])
    with pytest.raises(_features.MaskError, match="unknown feature 'no_such'"):
        _features.apply_mask(all_states(), ["no_such"])


def test_a_kernel_without_the_ring_buffer_is_refused_with_the_first_kernel_that_has_it():
    states = all_states()
    states["map_ringbuf"] = {"available": False, "reason": "BPF_MAP_CREATE: Invalid argument"}
    problems = _features.missing_required(states)
    assert problems == ["map_ringbuf (the BPF ring buffer (header records); Linux 5.8 or newer): "
                        "BPF_MAP_CREATE: Invalid argument"]
    assert _features.missing_required(all_states()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="probing loads BPF programs: needs root")
def test_kernel_features_probe():
    """The probes against this machine's kernel: required features present, answers stable."""
    first = _features.probe_all()
    assert set(first) == set(_features.FEATURES_BY_NAME)
    assert _features.missing_required(first) == []
    assert _features.probe_all() == first
