# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure parts of roles/host/files/bpfleet_agent.py: crash recovery decisions, the cursor,
rotation with `keep`, the Prometheus textfile, the config file. No kernel, no root.
(The same code against a real ring buffer and kill -9: test_ringbuf_kernel.py.)"""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
AGENT_PATH = os.path.join(REPO, "roles", "host", "files", "bpfleet_agent.py")


@pytest.fixture(scope="module")
def agent():
    spec = importlib.util.spec_from_file_location("bpfleet_agent_under_test", AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CURSOR = {"map_id": 7, "start": 1000, "end": 5800, "dev": 1, "ino": 2, "size_before": 300, "size_after": 900}


@pytest.mark.parametrize("consumer, found_size, expected", [
    (1000, 900, ("skip", 5800)),          # written, killed before release: do not write again
    (1000, 1200, ("skip", 5800)),         # ... and other policies appended after it
    (1000, 600, ("truncate", 300)),       # half written: cut the partial lines, write again
    (1000, 300, ("reread", None)),        # nothing written
    (1000, None, ("reread", None)),       # the file is gone
    (5800, 900, ("none", None)),          # released: nothing in flight
    (9000, 100, ("none", None)),
])
def test_recovery_action(agent, consumer, found_size, expected):
    assert agent.recovery_action(CURSOR, 7, consumer, found_size) == expected


def test_recovery_ignores_other_rings_and_missing_cursors(agent):
    assert agent.recovery_action(CURSOR, 8, 1000, 900) == ("none", None)
    assert agent.recovery_action(None, 7, 1000, 900) == ("none", None)
    assert agent.recovery_action(dict(CURSOR, end=1000), 7, 1000, 900) == ("none", None)


def test_cursor_round_trip_fixed_size(agent, tmp_path):
    cursor = agent.Cursor(str(tmp_path / "cursors" / "web.cursor"))
    assert cursor.load() is None
    cursor.begin(7, 1000, 5800, (1, 2), 300, 900)
    cursor.begin(7, 5800, 5896, (1, 2), 900, 1000)
    assert os.path.getsize(cursor.path) == agent.CURSOR_SIZE
    assert cursor.load() == {"map_id": 7, "start": 5800, "end": 5896, "dev": 1, "ino": 2,
                             "size_before": 900, "size_after": 1000}
    cursor.close()


def test_rotation_keeps_n_files_and_finds_the_moved_file_by_inode(agent, tmp_path):
    path = str(tmp_path / "log" / "h.jsonl")
    sink = agent.LogSink(path, max_size=100, keep=2, allowed_dirs=[str(tmp_path)])
    sink.write(b"a" * 60 + b"\n")
    first = sink.identity
    sink.write(b"b" * 60 + b"\n")           # >= 100 bytes: rotated
    assert os.path.getsize(path + ".1") == 122 and os.path.getsize(path) == 0
    assert sink.find(first) == (path + ".1", 122)
    for letter in b"cdef":
        sink.write(bytes([letter]) * 120 + b"\n")
    assert sorted(os.listdir(tmp_path / "log")) == ["h.jsonl", "h.jsonl.1", "h.jsonl.2"]
    assert open(path + ".1", "rb").read().startswith(b"f")
    assert open(path + ".2", "rb").read().startswith(b"e")
    sink.close()


def test_failpoints_parse(agent):
    points = agent.Failpoints("after-write:3")
    assert (points.name, points.remaining) == ("after-write", 3)
    points.hit("after-cursor")
    points.hit("after-write")
    assert points.remaining == 2
    assert agent.Failpoints(None).name is None


class FakePolicy:
    def __init__(self, agent_module):
        self.name = 'web "edge"'
        self.records_written = 12
        self.bytes_written = 3400
        self.records_malformed = 0
        self.records_emitted_kernel = 20
        self.records_lost_kernel = 8
        self.records_lost_user = 0
        self.last_record_time = "2026-11-23T17:00:01.500000000Z"
        self.rules = {"0": "default", "1": "deny"}
        self.rule_actions = {"default": "pass", "deny": "drop"}
        self.rule_counters = {(2, 0): (100, 6400), (2, 1): (5, 300)}

    def state(self):
        return "running"


class FakeAgent:
    def __init__(self, agent_module):
        self.host = "h1"
        self.started_at = "2026-11-23T17:00:00.000000000Z"
        self.policies = {"web": FakePolicy(agent_module)}
        self.interface_names = {2: "eth0"}


def test_prometheus_text_format(agent):
    text = agent.prometheus_text(FakeAgent(agent), 1795453205_000_000_000)
    assert text.endswith("\n")
    assert 'bpfleet_records_total{policy="web \\"edge\\""} 12\n' in text
    assert 'bpfleet_records_lost_total{policy="web \\"edge\\"",where="kernel"} 8\n' in text
    assert 'bpfleet_records_lost_total{policy="web \\"edge\\"",where="agent"} 0\n' in text
    assert ('bpfleet_packets_total{policy="web \\"edge\\"",iface="eth0",rule="deny",action="drop"} 5\n'
            in text)
    assert "bpfleet_agent_start_time_seconds 1795453200.000\n" in text
    assert 'bpfleet_last_record_timestamp_seconds{policy="web \\"edge\\""} 1795453201.500\n' in text
    # Exposition format: HELP and TYPE once per metric, before its samples.
    names = re.findall(r"^# TYPE (\S+) (counter|gauge)$", text, re.M)
    assert len(names) == len(set(names))
    for line in text.splitlines():
        assert line.startswith("# ") or re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.]+$', line), line


@pytest.mark.skipif(not shutil.which("prometheus-node-exporter"), reason="prometheus-node-exporter not installed")
def test_node_exporter_serves_the_textfile_unchanged(agent, tmp_path):
    (tmp_path / "bpfleet.prom").write_text(agent.prometheus_text(FakeAgent(agent), 1795453205_000_000_000))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        ["prometheus-node-exporter", "--web.listen-address=127.0.0.1:%d" % port, "--collector.disable-defaults",
         "--collector.textfile", "--collector.textfile.directory=%s" % tmp_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = None
        for _attempt in range(100):
            try:
                body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None, exporter.stderr.read(4000) if exporter.poll() is not None else "no answer"
        assert 'node_textfile_scrape_error 0' in body
        assert 'bpfleet_records_lost_total{policy="web \\"edge\\"",where="kernel"} 8' in body
        assert 'bpfleet_packets_total{action="drop",iface="eth0",policy="web \\"edge\\"",rule="deny"} 5' in body
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_config_file_sets_defaults_and_the_command_line_wins(agent, tmp_path):
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"poll_interval": 0.2, "textfile_dir": "/tmp/tf", "syslog": {"facility": "local3"}}))
    options = agent.parse_arguments(["run", "--config", str(config), "--poll-interval", "0.01"])
    assert options.poll_interval == 0.01
    assert options.textfile_dir == "/tmp/tf"
    assert options.syslog == {"facility": "local3"}
    assert options.status_interval == 1.0
    config.write_text(json.dumps({"poll_intervall": 1}))
    with pytest.raises(SystemExit, match="unknown keys poll_intervall"):
        agent.parse_arguments(["run", "--config", str(config)])
    with pytest.raises(SystemExit, match="does not exist"):
        agent.parse_arguments(["run", "--config", str(tmp_path / "missing.json")])


def test_syslog_sink_sends_one_datagram_per_record(agent, tmp_path):
    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    try:
        sink = agent.SyslogSink.from_config({"address": address, "facility": "local0", "policies": ["web"]})
        assert sink.wants("web") and not sink.wants("other")
        sink.send(['{"a":1}', '{"b":2}'])
        assert server.recv(1000) == b'<134>bpfleet: {"a":1}'
        assert server.recv(1000) == b'<134>bpfleet: {"b":2}'
        with pytest.raises(ValueError, match="facility"):
            agent.SyslogSink.from_config({"facility": "kern"})
    finally:
        server.close()
