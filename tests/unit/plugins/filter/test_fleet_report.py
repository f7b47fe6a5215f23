"""Filters fleet_report and fleet_report_html: per-host rows, out-of-date detection, escaping."""

import html.parser

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.bpfleet.core.plugins.filter import fleet_report as plugin

A = ("sha256:" + "a" * 64, "sha256:" + "1" * 64)
B = ("sha256:" + "b" * 64, "sha256:" + "2" * 64)


def facts(digests=A, healthy=True, agent=True, dropped=5, pending=None, events=(), name="web"):
    return {"ansible_facts": {"bpfleet": {
        "kernel": {"release": "6.18"},
        "agent": {"running": agent, "pid": 10},
        "policies": {name: {
            "policy": {"name": name, "source_digest": digests[0], "maps_digest": digests[1], "applied_at": "t",
                       "interfaces": ["eth0"], "xdp_mode": "auto"},
            "attachments": [{"iface": "eth0", "hook": "xdp", "mode": "native", "ok": healthy}],
            "drift": [] if healthy else ["eth0: xdp program is not attached"],
            "healthy": healthy,
            "counters": {"packets_seen": 100, "passed": 100 - dropped, "dropped": dropped,
                         "rules": {"deny": {"id": 1, "packets": dropped, "bytes": 60 * dropped, "kind": "deny",
                                            "action": "drop"}}},
            "log": {"enabled": True, "records_written": 7, "records_lost": 0},
            "history": {"good": None, "pending": pending, "events": list(events)},
        }},
    }}}


def test_majority_digest_decides_out_of_date_without_expected():
    hostvars = {"h1": facts(), "h2": facts(), "h3": facts(B), "h4": {}}
    report = plugin.fleet_report(hostvars, ["h1", "h2", "h3", "h4"])
    summary = report["summary"]
    assert summary["hosts"] == 4 and summary["reachable"] == 3
    assert summary["unreachable_hosts"] == ["h4"]
    assert summary["out_of_date"] == ["h3"]
    assert summary["dropped"] == 15 and summary["records_written"] == 21
    assert report["hosts"][0]["policies"][0]["attach_modes"] == {"eth0": "native"}
    assert report["hosts"][0]["policies"][0]["rules"][0]["packets"] == 5


def test_expected_policy_and_problems():
    expected = {"name": "web", "source_digest": B[0], "maps_digest": B[1]}
    hostvars = {"h1": facts(), "h2": facts(B, healthy=False, agent=False, pending={"deadline": "soon"})}
    report = plugin.fleet_report(hostvars, ["h1", "h2"], expected=expected)
    assert report["summary"]["out_of_date"] == ["h1"]
    h2 = report["hosts"][1]
    assert not h2["healthy"]
    assert any("not attached" in p for p in h2["problems"])
    assert any("waiting for confirmation" in p for p in h2["problems"])
    assert any("agent is not running" in p for p in h2["problems"])
    assert report["summary"]["pending_confirm"] == ["h2"]


def test_expected_policy_missing_on_a_host():
    expected = {"name": "other", "source_digest": B[0], "maps_digest": B[1]}
    report = plugin.fleet_report({"h1": facts()}, ["h1"], expected=expected)
    assert report["hosts"][0]["out_of_date"] == ["other is not applied"]


class _Texts(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.texts = []
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.texts.append(data)


def test_html_is_self_contained_and_escaped():
    hostvars = {"h1": facts(name="<script>x</script>"), "h2": {}}
    page = plugin.fleet_report_html(plugin.fleet_report(hostvars, ["h1", "h2"]))
    parser = _Texts()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "<script>x</script>" in "".join(parser.texts)
    assert "unreachable" in "".join(parser.texts)
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_wrong_input():
    with pytest.raises(AnsibleFilterError):
        plugin.fleet_report({}, "h1")
    with pytest.raises(AnsibleFilterError):
        plugin.fleet_report_html({"x": 1})


def test_the_report_shows_each_hosts_kernel_features():
    """Issue 13: the fleet report says per host what its kernel lacks and which fallback runs."""
    with_meta = facts()
    without_meta = facts()
    without_meta["ansible_facts"]["bpfleet"]["kernel"] = {
        "release": "6.18.44-fc-v1300", "bcc_version": "0.26.0",
        "features": {"map_ringbuf": True, "xdp_adjust_meta_in_xdp": False},
        "features_missing": {"xdp_adjust_meta_in_xdp": "program of this type cannot use helper bpf_xdp_adjust_meta#54"},
        "fallbacks": {"xdp_adjust_meta_in_xdp": "the tc ingress logger classifies each logged packet again"},
        "unsupported": []}
    report = plugin.fleet_report({"h1": with_meta, "h2": without_meta}, ["h1", "h2"])
    features = dict((entry["host"], entry["kernel_features"]) for entry in report["hosts"])
    assert features["h1"]["missing"] == {} and features["h1"]["probed"] == 0
    assert features["h2"]["available"] == ["map_ringbuf"]
    assert list(features["h2"]["fallbacks"]) == ["xdp_adjust_meta_in_xdp"]
    parser = _Texts()
    parser.feed(plugin.fleet_report_html(report))
    text = "".join(parser.texts)
    assert "BCC 0.26.0; 1/2 features; lacks: xdp_adjust_meta_in_xdp" in text
