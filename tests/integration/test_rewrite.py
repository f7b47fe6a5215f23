"""Header rewrites on real hosts over SSH, with real tagged and untagged traffic (issue 18).

h1 carries the policy; h2 is its peer. What crosses the wire is read by tcpdump on the other
host, what the stack accepts by a UDP listener there:
- ingress `vlan: strip`: h2 sends 802.1Q-tagged UDP (VLAN 100, raw frames from an AF_PACKET
  socket: this kernel has no VLAN devices) to h1. h1 has no VLAN device either, so its stack
  delivers the datagrams only if the tag was removed before it; the rule matches one of h1's
  two extra addresses, and the other one must stay undelivered.
- egress `vlan: {push: 120, pcp: 3}`: h1's UDP to one port arrives at h2 tagged.
- egress `dscp: ef`: h1's UDP to another port arrives at h2 with DSCP 46 (IPv4 TOS 0xb8,
  IPv6 traffic class 0xb8) and h2's stack accepts every datagram (checksums valid).
Counters in the facts match the packets sent; records name the rewrite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
PROBE = REPO / "tests" / "fleet" / "probe.py"

pytestmark = pytest.mark.integration

LAB_HOSTS = 2
# Documentation addresses (RFC 5737) for the tagged segment; the lab uses 203.0.113.0/24 and
# 198.51.100.0/24 for its own addresses.
H1_TAGGED, H1_OTHER, H2_TAGGED = "192.0.2.11", "192.0.2.99", "192.0.2.12"
TAG_IN, TAG_OUT, PCP_OUT = 100, 120, 3
PORT_STRIP, PORT_PUSH, PORT_DSCP = 47100, 47101, 47102
COUNT = 10
LOG = "/var/log/bpfleet/rewrite.jsonl"


def policy(lab):
    h2 = lab.hosts["h2"]
    return {
        "name": "rewrite",
        "interfaces": ["eth0"],
        "rewrite": [
            {"name": "untag", "direction": "ingress", "match": {"dst": H1_TAGGED + "/32"}, "vlan": "strip"},
            {"name": "tag-out", "direction": "egress",
             "match": {"dst": h2["lab_ipv4"] + "/32", "proto": "udp", "dst_port": PORT_PUSH},
             "vlan": {"push": TAG_OUT, "pcp": PCP_OUT}},
            {"name": "voice", "direction": "egress", "match": {"proto": "udp", "dst_port": PORT_DSCP}, "dscp": "ef"},
        ],
        "log": {"fields": ["action", "rule", "src_ip", "dst_ip", "proto", "dst_port", "rewrite"],
                "directions": ["egress"], "sink": {"file": LOG}},
    }


def apply(lab, raw, check=False):
    return lab.playbook([{"bpfleet.core.policy": {"policy": raw}}], hosts="h1", check=check)["h1"][0]


def in_host(lab, host, *argv):
    return subprocess.Popen([sys.executable, str(LAB), "exec", "--name", lab.name, "--host", host, "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Capture:
    """tcpdump -e on a host's eth0 for UDP to `port` (tagged or not), until stopped."""

    def __init__(self, lab, host, port):
        self.lab, self.host = lab, host
        self.proc = in_host(lab, host, "tcpdump", "-i", "eth0", "-e", "-nn", "-vv", "-l", "-c", str(2 * COUNT),
                            f"udp dst port {port} or (vlan and udp dst port {port})")
        deadline = time.monotonic() + 10
        # tcpdump says "listening on" on stderr once the capture is armed.
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line:
                return
        raise AssertionError("tcpdump did not start on %s" % host)

    def lines(self, timeout=10):
        try:
            out, _err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            out, _err = self.proc.communicate()
        # -vv continues a packet on indented lines: one string per packet.
        packets = []
        for line in out.splitlines():
            if line[:1].isspace() and packets:
                packets[-1] += " " + line.strip()
            elif line.strip():
                packets.append(line)
        return packets


class Listener:
    """Counts UDP datagrams per source; stops after `COUNT` or `seconds`."""

    def __init__(self, lab, host, port, seconds=30):
        self.out = f"/tmp/itest-{lab.name}-{host}-{port}.json"
        self.proc = in_host(lab, host, "/usr/bin/python3", str(PROBE), "listen", "--proto", "udp", "--port",
                            str(port), "--duration", str(seconds), "--stop-after", str(COUNT), "--out", self.out)
        lab.exec(host, "sh", "-c", f"for i in $(seq 50); do ss -Hlun sport = :{port} | grep -q . && exit 0;"
                                   " sleep 0.1; done; exit 1")

    def received(self):
        self.proc.wait(timeout=30)
        with open(self.out) as handle:
            return json.load(handle)["received"]


TAGGED_SENDER = r"""
import socket, struct, sys
iface, src_mac, dst_mac, vlan, src, dst, port, count = sys.argv[1:9]
payload = b"bpfleet-rewrite"
udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload   # checksum 0: none (IPv4)
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
words = struct.unpack("!10H", header)
total = sum(words)
total = (total & 0xffff) + (total >> 16)
checksum = ~((total & 0xffff) + (total >> 16)) & 0xffff
ip = header[:10] + struct.pack("!H", checksum) + header[12:]
frame = (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
         + struct.pack("!HHH", 0x8100, int(vlan), 0x0800) + ip + udp)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
for _ in range(int(count)):
    sock.send(frame)
"""


def send_tagged(lab, dst, port, count=COUNT):
    """802.1Q-tagged IPv4/UDP frames from h2 to h1's MAC, straight onto h2's eth0."""
    lab.exec("h2", "/usr/bin/python3", "-c", TAGGED_SENDER, "eth0", lab.hosts["h2"]["lab_mac"],
             lab.hosts["h1"]["lab_mac"], str(TAG_IN), H2_TAGGED, dst, str(port), str(count))


def send(lab, host, src, dst, port, count=COUNT):
    lab.exec(host, "/usr/bin/python3", str(PROBE), "send", "--proto", "udp", "--src", src, "--dst", dst,
             "--port", str(port), "--count", str(count), "--interval", "0.01")


def rule_packets(lab, name):
    facts = lab.playbook([{"bpfleet.core.bpfleet_facts": {}}], hosts="h1")["h1"][0]["ansible_facts"]["bpfleet"]
    return facts["policies"]["rewrite"]["counters"]["rules"].get(name, {}).get("packets", 0)


@pytest.fixture(scope="module")
def prepared(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}], hosts="h1")
    # h1: two extra untagged addresses on eth0; h2 sends tagged frames to h1's MAC directly.
    lab.exec("h1", "ip", "addr", "add", H1_TAGGED + "/24", "dev", "eth0")
    lab.exec("h1", "ip", "addr", "add", H1_OTHER + "/24", "dev", "eth0")
    applied = apply(lab, policy(lab))
    assert applied["changed"] is True and applied["compiled"] is True
    return lab


def test_the_policy_is_idempotent_and_check_mode_shows_a_rewrite_change(prepared):
    lab = prepared
    again = apply(lab, policy(lab))
    assert again["changed"] is False and again["compiled"] is False
    changed = policy(lab)
    changed["rewrite"][2]["dscp"] = "af41"
    planned = apply(lab, changed, check=True)
    assert planned["changed"] is True and planned["compiled"] is True
    assert apply(lab, policy(lab))["changed"] is False  # check mode changed nothing


def test_ingress_strip_delivers_tagged_frames_to_the_untagged_stack(prepared):
    lab = prepared
    before = rule_packets(lab, "untag")
    capture = Capture(lab, "h1", PORT_STRIP)
    listener = Listener(lab, "h1", PORT_STRIP)
    send_tagged(lab, H1_TAGGED, PORT_STRIP)
    send_tagged(lab, H1_OTHER, PORT_STRIP)
    received = listener.received()
    lines = capture.lines()
    # On the wire (tcpdump taps before tc ingress) both kinds arrived tagged...
    assert sum(f"vlan {TAG_IN}," in line and f"> {H1_TAGGED}.{PORT_STRIP}" in line for line in lines) == COUNT, lines
    assert sum(f"vlan {TAG_IN}," in line and f"> {H1_OTHER}.{PORT_STRIP}" in line for line in lines) == COUNT, lines
    # ...and only the matched ones reached the stack, untagged.
    assert received.get(H2_TAGGED, 0) == COUNT, received
    assert rule_packets(lab, "untag") - before == COUNT


def test_egress_push_puts_the_tag_and_priority_on_the_wire(prepared):
    lab = prepared
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    before = rule_packets(lab, "tag-out")
    capture = Capture(lab, "h2", PORT_PUSH)
    send(lab, "h1", h1["lab_ipv4"], h2["lab_ipv4"], PORT_PUSH)
    send(lab, "h1", h1["lab_ipv4"], h2["lab_ipv4"], PORT_DSCP, count=2)  # not matched by tag-out
    lines = capture.lines()
    tagged = [line for line in lines if f"vlan {TAG_OUT}, p {PCP_OUT}," in line]
    assert len(tagged) == COUNT, lines
    assert all(f"> {h2['lab_ipv4']}.{PORT_PUSH}" in line for line in tagged)
    assert rule_packets(lab, "tag-out") - before == COUNT


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_egress_dscp_is_set_on_the_wire_and_the_receiver_accepts_every_packet(prepared, family):
    lab = prepared
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    src, dst = (h1["lab_ipv4"], h2["lab_ipv4"]) if family == "ipv4" else (h1["lab_ipv6"], h2["lab_ipv6"])
    before = rule_packets(lab, "voice")
    capture = Capture(lab, "h2", PORT_DSCP)
    listener = Listener(lab, "h2", PORT_DSCP)
    send(lab, "h1", src, dst, PORT_DSCP)
    received = listener.received()
    lines = capture.lines()
    marked = re.compile(r"\btos 0xb8\b" if family == "ipv4" else r"\bclass 0xb8\b")
    assert sum(bool(marked.search(line)) for line in lines) == COUNT, lines
    if family == "ipv4":
        assert not [line for line in lines if "bad cksum" in line], lines
    assert received.get(src, 0) == COUNT, received
    assert rule_packets(lab, "voice") - before == COUNT


def test_records_name_the_rewrite(prepared):
    lab = prepared
    deadline = time.monotonic() + 15
    while True:
        out = lab.exec("h1", "sh", "-c", f"grep -h '\"dst_port\":{PORT_DSCP},' {LOG} || true").stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(records) >= 2 * COUNT or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert records and {record["rewrite"] for record in records} == {"voice"}, records[:3]
