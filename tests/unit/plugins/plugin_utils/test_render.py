"""Rendering: deterministic, self-contained C with the policy's shape compiled in."""

import copy

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

POLICY = {
    "name": "edge-web",
    "interfaces": ["eth1", "eth0"],
    "filter": {"deny": ["203.0.113.0/24", "2001:db8:bad::/48"], "allow": ["198.51.100.7/32"]},
    "log": {"fields": ["src_ip", "dst_ip", "proto", "action"], "directions": ["ingress"]},
}


def render(raw):
    model, _warnings = _policy.validate(copy.deepcopy(raw), "t.yml")
    return _render.render(model)


def test_rendering_is_deterministic_and_ignores_yaml_order():
    first = render(POLICY)
    reordered = dict(reversed(list(copy.deepcopy(POLICY).items())))
    reordered["interfaces"] = ["eth0", "eth1"]
    reordered["filter"]["deny"] = list(reversed(reordered["filter"]["deny"]))
    second = render(reordered)
    assert first["source"] == second["source"]
    assert first["source_digest"] == second["source_digest"]
    assert first["maps_digest"] == second["maps_digest"]


def test_list_change_changes_maps_digest_only():
    base = render(POLICY)
    more = copy.deepcopy(POLICY)
    more["filter"]["deny"].append("192.0.2.0/24")
    changed = render(more)
    assert changed["source_digest"] == base["source_digest"], "a list edit must not recompile"
    assert changed["maps_digest"] != base["maps_digest"]


def test_shape_is_compiled_in():
    source = render(POLICY)["source"]
    assert '#define PIN_DIR "/sys/fs/bpf/bpfleet/edge-web/maps/"' in source
    assert "#define DEFAULT_XDP_VERDICT XDP_PASS" in source
    assert "#define LOG_INGRESS 1" in source
    assert "#define LOG_EGRESS 0" in source
    assert "#define DENY_V4_MAX %d" % _policy.DENY_V4_MAX in source
    deny_all = dict(POLICY, filter={"default": "deny", "allow": ["198.51.100.0/24"]})
    assert "#define DEFAULT_XDP_VERDICT XDP_DROP" in render(deny_all)["source"]


def test_headers_are_included_verbatim():
    source = render(POLICY)["source"]
    with open(_render.BPF_DIR + "/include/bpfleet_parse.h") as handle:
        assert handle.read() in source
    assert "{%" not in source and "{{" not in source


def test_programs_follow_logged_directions():
    assert [p["hook"] for p in render(POLICY)["programs"]] == ["xdp", "tc-ingress"]
    both = dict(POLICY, log={"fields": ["src_ip"]})
    assert [p["hook"] for p in render(both)["programs"]] == ["xdp", "tc-ingress", "tc-egress"]
    no_log = {"name": "edge-web", "interfaces": ["eth0"]}
    assert [p["function"] for p in render(no_log)["programs"]] == ["bpfleet_xdp"]
    for program in render(both)["programs"]:
        assert len(program["function"]) <= 15, "kernel program names are cut at 15 characters"


def test_manifest_matches_kernel_shapes():
    maps = dict((m["name"], m) for m in _contract.map_specs())
    assert maps["deny_v4"]["key_size"] == 8 and maps["deny_v6"]["key_size"] == 20
    assert maps["events"]["type"] == _contract.MAP_TYPE_RINGBUF
    assert maps["events"]["max_entries"] & (maps["events"]["max_entries"] - 1) == 0, "ring size: power of 2"
