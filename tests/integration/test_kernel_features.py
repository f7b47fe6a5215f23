"""Kernel feature probes and fallbacks on real hosts over SSH (issue 13).

Each optional feature has a fallback path in the program. `mask_features` makes a host
compile and run that path as a kernel without the feature would; every masked variant is
compiled by BCC, loaded by the verifier, attached, and must pass real traffic with the right
drops and the right records. A kernel that lacks a required feature must be refused before
anything on the host changes.

h1 is the protected host; h2 sends from its allowed (203.0.113.x) and denied (198.51.100.x)
addresses. Tests run in file order against one fleet.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fleet"))

pytestmark = pytest.mark.integration

LAB_HOSTS = 2
LOG = "/var/log/bpfleet/features.jsonl"
POLICY = {
    "name": "features",
    "interfaces": ["eth0"],
    "filter": {"default": "allow", "deny": ["198.51.100.0/24"], "allow": ["203.0.113.0/24"]},
    "log": {"fields": ["action", "rule", "src_ip", "dst_ip", "proto", "src_port", "dst_port"],
            "directions": ["ingress", "egress"], "sink": {"file": LOG}},
}
PROBE = REPO / "tests" / "fleet" / "probe.py"
# The program's optional features alone, then every optional feature at once (the host
# code's only one, batch map writes, is exercised there by the list edit).
MASKS = [
    [],
    ["xdp_adjust_meta_in_xdp"],
    ["ktime_get_boot_ns_in_xdp", "ktime_get_boot_ns_in_sched_cls"],
    ["xdp_adjust_meta_in_xdp", "ktime_get_boot_ns_in_xdp", "ktime_get_boot_ns_in_sched_cls", "map_batch_ops"],
]
FEATURES_HEADER = "/var/lib/bpfleet/features/bpfleet_features.h"
FEATURES_CACHE = "/var/lib/bpfleet/kernel-features.json"


def apply(lab, policy=None, mask=(), expect_failure=False):
    task = {"bpfleet.core.policy": {"policy": policy or POLICY, "mask_features": list(mask)}}
    return lab.playbook([task], hosts="h1", expect_failure=expect_failure)["h1"][0]


def facts(lab):
    return lab.playbook([{"bpfleet.core.bpfleet_facts": {}}], hosts="h1")["h1"][0]["ansible_facts"]["bpfleet"]


def xdp_prog_id(lab):
    link = json.loads(lab.exec("h1", "ip", "-d", "-j", "link", "show", "dev", "eth0").stdout)[0]
    return (link.get("xdp") or {}).get("prog", {}).get("id")


def send_udp(lab, src, port, count=5):
    lab.exec("h2", "/usr/bin/python3", str(PROBE), "send", "--proto", "udp", "--src", src,
             "--dst", lab.hosts["h1"]["lab_ipv4"], "--port", str(port), "--count", str(count), "--interval", "0.01")


def records_to_port(lab, port, want, timeout=15.0):
    """Ingress records of h1's log for UDP to `port`, once at least `want` are there."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.exec("h1", "sh", "-c", f"grep -hE '\"dst_port\":{port}[,}}]' {LOG} || true").stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        records = [r for r in records if r.get("proto") == "udp" and r.get("dst_port") == port]
        if len(records) >= want or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


@pytest.fixture(scope="module")
def prepared(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}],
                 hosts="h1")
    return lab


def test_facts_report_every_probed_feature(prepared):
    kernel = facts(prepared)["kernel"]
    names = set(kernel["features"])
    assert {"map_ringbuf", "prog_type_xdp", "xdp_adjust_meta_in_xdp", "map_batch_ops"} <= names
    assert kernel["unsupported"] == []
    assert kernel["bcc_version"]
    # Every missing feature says why, in the kernel's words, and names its fallback.
    for name, available in kernel["features"].items():
        if not available:
            assert kernel["features_missing"][name]
            assert name in kernel["fallbacks"], name


@pytest.mark.parametrize("mask", MASKS, ids=lambda mask: "+".join(mask) or "as-probed")
def test_each_fallback_compiles_attaches_and_filters_real_traffic(prepared, mask):
    lab = prepared
    probed = facts(lab)["kernel"]["features"]
    result = apply(lab, mask=mask)
    assert result["kernel"]["masked"] == sorted(mask)
    assert set(mask) <= set(result["kernel"]["fallbacks"])
    header = lab.exec("h1", "cat", FEATURES_HEADER).stdout
    adjust_meta = probed["xdp_adjust_meta_in_xdp"] and "xdp_adjust_meta_in_xdp" not in mask
    assert f"#define HAVE_XDP_ADJUST_META {int(adjust_meta)}" in header
    boot_clock = probed["ktime_get_boot_ns_in_xdp"] and "ktime_get_boot_ns_in_xdp" not in mask
    assert f"#define HAVE_KTIME_GET_BOOT_NS {int(boot_clock)}" in header
    assert xdp_prog_id(lab) is not None

    # A list edit goes through the map writes: batched, or one element at a time when masked.
    policy = copy.deepcopy(POLICY)
    policy["filter"]["deny"].append("192.0.2.%d/32" % (10 + MASKS.index(mask)))
    edited = apply(lab, policy=policy, mask=mask)
    assert edited["changed"] is True and edited["compiled"] is False

    h2 = lab.hosts["h2"]
    assert lab.udp_delivered("h2", h2["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 10
    assert lab.udp_delivered("h2", h2["lab_ipv4_alt"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 0

    # Fresh ports per variant: only this variant's packets match.
    port = 48100 + MASKS.index(mask) * 2
    send_udp(lab, h2["lab_ipv4"], port)
    send_udp(lab, h2["lab_ipv4_alt"], port + 1)
    passed = records_to_port(lab, port, 5)
    dropped = records_to_port(lab, port + 1, 5)
    assert len(passed) == 5 and len(dropped) == 5, (passed, dropped)
    # The allow rule's name reaches tc ingress's records with or without the metadata hand-over.
    assert {(r["dir"], r["action"], r["rule"], r["src_ip"]) for r in passed} == {
        ("ingress", "pass", "allow", h2["lab_ipv4"])}
    assert {(r["dir"], r["action"], r["rule"], r["src_ip"]) for r in dropped} == {
        ("ingress", "drop", "deny", h2["lab_ipv4_alt"])}
    # Time stamps are wall-clock time from either clock.
    newest = max(r["ts"] for r in passed)
    assert abs(time.mktime(time.strptime(newest[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())) < 120

    again = apply(lab, policy=policy, mask=mask)
    assert again["changed"] is False and again["compiled"] is False


def test_facts_say_which_xdp_modes_the_interface_driver_took(prepared):
    policy = facts(prepared)["policies"]["features"]["policy"]
    tried = policy["xdp_modes_tried"]["eth0"]
    assert tried["driver"] == "veth"
    # veth has native XDP; auto mode takes it first.
    assert tried["native"] == "ok"


def test_masking_a_feature_recompiles_and_unmasking_returns(prepared):
    lab = prepared
    apply(lab)
    masked = apply(lab, mask=["ktime_get_boot_ns_in_xdp", "ktime_get_boot_ns_in_sched_cls"])
    assert masked["compiled"] is True
    assert any("kernel features changed" in line for line in masked["plan"])
    back = apply(lab)
    assert back["compiled"] is True
    assert apply(lab)["compiled"] is False


def test_masking_a_required_feature_is_refused(prepared):
    failed = apply(prepared, mask=["map_ringbuf"], expect_failure=True)
    assert "map_ringbuf is required" in failed["msg"]


def test_a_kernel_without_a_required_feature_is_refused_before_any_change(prepared):
    """A planted probe cache stands in for a kernel without the BPF ring buffer (Linux < 5.8):
    the cache is what the module trusts for this kernel and boot."""
    lab = prepared
    before_prog = xdp_prog_id(lab)
    before_state = lab.exec("h1", "cat", "/var/lib/bpfleet/features/state.json").stdout
    cache = json.loads(lab.exec("h1", "cat", FEATURES_CACHE).stdout)
    cache["features"]["map_ringbuf"] = {"available": False, "reason": "BPF_MAP_CREATE: Invalid argument"}
    planted = json.dumps(cache)
    lab.exec("h1", "/usr/bin/python3", "-c",
             f"import sys; open({FEATURES_CACHE!r}, 'w').write(sys.argv[1])", planted)
    try:
        policy = copy.deepcopy(POLICY)
        policy["filter"]["deny"].append("192.0.2.99/32")
        failed = apply(lab, policy=policy, expect_failure=True)
        assert "host h1 (kernel " in failed["msg"] and "nothing was changed" in failed["msg"]
        assert "map_ringbuf" in failed["msg"] and "Linux 5.8 or newer" in failed["msg"]
        assert xdp_prog_id(lab) == before_prog
        assert lab.exec("h1", "cat", "/var/lib/bpfleet/features/state.json").stdout == before_state
        assert facts(lab)["kernel"]["unsupported"]
    finally:
        lab.exec("h1", "rm", "-f", FEATURES_CACHE)
    # With the real probe back, the same change goes through.
    assert apply(lab, policy=policy)["changed"] is True
