"""Pure logic of the benchmarks (tests/bench): the deny lists every filter gets, the tables and
the SVG chart written from results. The benchmarks themselves are not part of the suite."""

import ipaddress
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import report  # noqa: E402
from _common import deny_list, summary  # noqa: E402

LAB = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def test_deny_lists_are_disjoint_deterministic_and_end_with_the_denied_source():
    prefixes = deny_list(5000, "192.0.2.66")
    assert len(prefixes) == 5000
    assert prefixes == deny_list(5000, "192.0.2.66")
    assert prefixes[-1] == "192.0.2.66/32"
    networks = sorted(ipaddress.ip_network(p) for p in prefixes[:-1])
    for left, right in zip(networks, networks[1:], strict=False):
        assert not left.overlaps(right), (left, right)
    assert not any(n.overlaps(lab) for n in networks for lab in LAB)
    assert {n.prefixlen for n in networks} == {24, 28, 32}


def test_summary_keeps_min_median_and_the_samples():
    assert summary([3, 1, 2]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0, "values": [3.0, 1.0, 2.0]}
    assert summary([]) == {"n": 0}


def run(name, size, source, rx, drop):
    return {"filter": name, "size": size, "source": source, "rx_pps": summary([rx]), "drop_pps": summary([drop]),
            "capacity_pps_per_core": summary([rx + drop])}


RESULTS = {
    "mode": "full", "command": "tests/bench/run.sh", "machine_before": {"loadavg": [1.0, 1.0, 1.0]},
    "sections": {"filter": {"runs": [
        run("none", 0, "allowed", 1000000, 0), run("none", 0, "denied", 1000000, 0),
        run("bpfleet", 1000, "allowed", 950000, 0), run("bpfleet", 1000, "denied", 0, 4000000),
        run("bpfleet", 100000, "allowed", 920000, 0), run("bpfleet", 100000, "denied", 0, 3000000),
        run("nftables", 100000, "allowed", 600000, 0), run("nftables", 100000, "denied", 0, 1000000),
    ], "loads": [{"filter": "bpfleet", "size": 100000, "seconds": 12.5}]}},
}


def test_the_chart_is_svg_with_a_line_per_filter_and_source():
    svg = report.throughput_svg(RESULTS)
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    # bpfleet and nftables, in both panels
    assert len(lines) == 4
    colors = {line.get("stroke") for line in lines}
    assert colors == {report.COLORS["bpfleet"], report.COLORS["nftables"]}


def test_targets_compare_with_nftables_and_no_filter():
    rows = dict((target, (measured, met)) for target, measured, met in report.targets(RESULTS))
    assert rows["drop rate at 100k prefixes >= 4x nftables"] == ("3,000,000 vs 1,000,000: 3.00x", "no")
    assert rows["allowed traffic at 100,000 prefixes >= 90 % of no filter (received pps)"] == ("92.0 %", "yes")
    assert rows["allowed traffic at 100,000 prefixes >= 90 % of no filter (capacity per CPU)"] == ("92.0 %", "yes")
    tables = report.tables(RESULTS)
    assert "| bpfleet | 4,000,000 (4,000,000) | 3,000,000 (3,000,000) |" in tables
    assert "| bpfleet | n/a | 12.5 |" in tables


def test_a_longer_list_contains_every_shorter_one():
    short, long = deny_list(100, "192.0.2.66"), deny_list(1000, "192.0.2.66")
    assert set(short[:-1]) < set(long[:-1])


def test_the_short_blocklist_edit_is_held_to_its_stated_bound():
    rows = [{"operation": "add one address (bpfleet.core.blocklist)", "hosts": 20, "seconds": 15.0,
             "compiles": 0, "changed": 20, "bound_s": 30.0},
            {"operation": "add one address (bpfleet.core.blocklist)", "hosts": 3, "seconds": 13.5,
             "compiles": 0, "changed": 3, "bound_s": 12.0}]
    targets = dict((target, (measured, met)) for target, measured, met in
                   report.targets({"sections": {"fleet": {"rows": rows}}}))
    assert targets["one address blocked on 20 host(s) in one short task (bpfleet.core.blocklist) <= 30 s"] == (
        "15.0 s", "yes")
    assert targets["one address blocked on 3 host(s) in one short task (bpfleet.core.blocklist) <= 12 s"] == (
        "13.5 s", "no")
