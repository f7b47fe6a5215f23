"""bpfleet-blast really sends: counted frame by frame by a receiver in another lab host.

h1 floods h2 through the lab's bridge. A UDP receiver in h2 reads every datagram and checks
the sequence number and magic at the start of the payload; the kernel has already checked
the UDP checksum (a bad one is dropped and counted in InCsumErrors, never delivered).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import blast  # noqa: E402

sys.path.insert(0, str(HERE.parents[1] / ".tmp" / "collections"))
from ansible_collections.bpfleet.core.plugins.module_utils import _features  # noqa: E402


def live_frames():
    """(available, reason): whether this kernel lets BPF_PROG_TEST_RUN send XDP live frames
    (6.18.44-fc-v1300 answers EPERM). Probed, as the benchmarks do, never assumed."""
    return _features.PROBES_BY_KIND["live_frames"]()


def expect_refusal_without_live_frames(mode, send):
    """On a kernel without live frames the xdp mode must fail loudly with the kernel's answer;
    returns True when it did (the caller then has nothing more to check)."""
    if mode != "xdp" or live_frames()[0]:
        return False
    with pytest.raises(blast.BlastError, match=r"BPF_PROG_TEST_RUN \(live frames\).*Operation not permitted"):
        send()
    return True


LAB = HERE / "bpfleet_lab.py"
pytestmark = pytest.mark.integration

H2_MAC = "02:62:66:6c:00:02"
ADDRESSES = {4: ("198.51.100.11", "203.0.113.12"), 6: ("2001:db8:100::11", "2001:db8:100::12")}

# Runs inside h2: counts datagrams on port 9 (IPv4 and IPv6) until nothing came for IDLE s.
RECEIVER = r"""
import json, select, socket, struct, sys
port, idle, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
sockets = []
for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: a burst must not overflow
    sock.bind((address, port))
    sock.setblocking(False)
    sockets.append(sock)
open(out + ".ready", "w").close()
seqs, sports, foreign = [], set(), 0
while select.select(sockets, [], [], idle)[0]:
    for sock in sockets:
        while True:
            try:
                data, source = sock.recvfrom(2048)
            except BlockingIOError:
                break
            if data[4:8] != b"BPFB":
                foreign += 1
                continue
            seqs.append(struct.unpack("!I", data[:4])[0])
            sports.add(source[1])
with open(out, "w") as handle:
    json.dump({"seqs": seqs, "sports": sorted(sports), "foreign": foreign}, handle)
"""


def lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(LAB), *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"bpfleet_lab.py {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab fleet creates namespaces")
    name = f"bnblast{os.getpid() % 100000}"
    lab("up", "--name", name, "--hosts", "2")
    yield name
    lab("down", "--name", name)


def interface_counters(fleet: str, host: str) -> dict:
    """rx/tx packets and drops of eth0 inside a host, from its /proc/net/dev."""
    text = lab("exec", "--name", fleet, "--host", host, "--", "cat", "/proc/net/dev").stdout
    for line in text.splitlines():
        name, _sep, values = line.partition(":")
        if name.strip() == "eth0":
            fields = [int(v) for v in values.split()]
            return {"rx_packets": fields[1], "rx_dropped": fields[3], "tx_packets": fields[9]}
    raise AssertionError(f"no eth0 in {host}:\n{text}")


def udp_checksum_errors(fleet: str, host: str) -> int:
    snmp = lab("exec", "--name", fleet, "--host", host, "--", "cat", "/proc/net/snmp").stdout
    header, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")][:2]
    snmp6 = lab("exec", "--name", fleet, "--host", host, "--", "cat", "/proc/net/snmp6").stdout
    v6 = dict(line.split() for line in snmp6.splitlines() if line.strip())
    return int(dict(zip(header, values, strict=True))["InCsumErrors"]) + int(v6["Udp6InCsumErrors"])


def receive_while(fleet: str, tmp_path: Path, send) -> tuple[dict, dict]:
    """Start the receiver in h2, run send(), return (sender report, receiver result)."""
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    out = tmp_path / "received.json"
    receiver = subprocess.Popen([sys.executable, str(LAB), "exec", "--name", fleet, "--host", "h2", "--",
                                 "/usr/bin/python3", str(script), "9", "1.0", str(out)])
    try:
        deadline = time.monotonic() + 15
        while not Path(str(out) + ".ready").exists():
            assert receiver.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.05)
        report = send()
        assert receiver.wait(timeout=60) == 0
    finally:
        if receiver.poll() is None:
            receiver.kill()
    return report, json.loads(out.read_text())


def test_refuses_a_destination_outside_the_lab():
    result = subprocess.run([str(blast.binary()), "--iface", "lo", "--src", "10.0.0.1", "--dst", "10.0.0.2",
                             "--dst-mac", H2_MAC, "--count", "1"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "outside the lab networks" in result.stderr
    assert result.stdout == ""


def test_refuses_an_unbounded_flood():
    result = subprocess.run([str(blast.binary()), "--iface", "lo", "--src", "203.0.113.11", "--dst", "203.0.113.12",
                             "--dst-mac", H2_MAC], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "--count or --duration" in result.stderr


@pytest.mark.parametrize("mode", ["packet", "xdp"])
@pytest.mark.parametrize("family", [4, 6])
def test_every_frame_arrives_with_its_sequence_number(fleet, tmp_path, mode, family):
    src, dst = ADDRESSES[family]
    count, sports, first = 20_000, 7, 2**32 - 5  # the sequence wraps around within the run
    if expect_refusal_without_live_frames(mode, lambda: blast.run_in_lab(
            fleet, "h1", iface="eth0", src=src, dst=dst, dst_mac=H2_MAC, count=10, mode=mode)):
        return
    errors_before = udp_checksum_errors(fleet, "h2")
    report, received = receive_while(fleet, tmp_path, lambda: blast.run_in_lab(
        fleet, "h1", iface="eth0", src=src, dst=dst, dst_mac=H2_MAC, count=count, sports=sports,
        seq_start=first, size=200, mode=mode))

    assert report["sent"] == count
    assert report["mode"] == mode
    assert report["first_seq"] == first and report["last_seq"] == (first + count - 1) % 2**32
    assert received["foreign"] == 0
    assert len(received["seqs"]) == count, "frames lost or duplicated on a quiet 2-host lab"
    assert set(received["seqs"]) == {(first + i) % 2**32 for i in range(count)}
    assert received["sports"] == list(range(40000, 40000 + sports))
    assert udp_checksum_errors(fleet, "h2") == errors_before


@pytest.mark.parametrize("mode", ["packet", "xdp"])
def test_a_flood_at_full_speed_reaches_the_receiving_interface(fleet, mode):
    if expect_refusal_without_live_frames(mode, lambda: blast.run_in_lab(
            fleet, "h1", iface="eth0", src=ADDRESSES[4][0], dst=ADDRESSES[4][1], dst_mac=H2_MAC, count=10,
            mode=mode)):
        return
    before = interface_counters(fleet, "h2")
    sender_before = interface_counters(fleet, "h1")
    report = blast.run_in_lab(fleet, "h1", iface="eth0", src=ADDRESSES[4][0], dst=ADDRESSES[4][1],
                              dst_mac=H2_MAC, count=300_000, mode=mode)
    after = interface_counters(fleet, "h2")

    assert report["sent"] == 300_000
    assert report["seconds"] > 0 and report["pps"] == pytest.approx(report["sent"] / report["seconds"], rel=1e-3)
    # The sender's own interface counted them going out (SSH chatter may add a few).
    assert interface_counters(fleet, "h1")["tx_packets"] - sender_before["tx_packets"] >= 300_000
    # Every frame reached h2's eth0 (received, or dropped there when its backlog was full).
    arrived = (after["rx_packets"] - before["rx_packets"]) + (after["rx_dropped"] - before["rx_dropped"])
    assert arrived >= 300_000
    if mode == "xdp":
        # The program was attached to h1's eth0 for the run (warm_dispatcher) and left with the sender.
        assert report["warm"] is True
        link = lab("exec", "--name", fleet, "--host", "h1", "--", "ip", "-d", "link", "show", "eth0").stdout
        assert "xdp" not in link, link


def test_rate_and_duration_are_kept(fleet):
    report = blast.run_in_lab(fleet, "h1", iface="eth0", src=ADDRESSES[6][0], dst=ADDRESSES[6][1],
                              dst_mac=H2_MAC, rate=20_000, duration=1.0)
    assert 0.98 <= report["seconds"] <= 1.2
    assert report["sent"] == pytest.approx(20_000, rel=0.05)
    assert report["pps"] == pytest.approx(20_000, rel=0.05)


def test_a_count_ends_the_flood_before_the_duration(fleet):
    report = blast.run_in_lab(fleet, "h1", iface="eth0", src=ADDRESSES[4][0], dst=ADDRESSES[4][1],
                              dst_mac=H2_MAC, count=1000, duration=30, rate=10_000)
    assert report["sent"] == 1000
    assert report["seconds"] < 1.0
