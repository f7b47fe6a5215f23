"""bpfleet-agent on real lab hosts, installed by the host role and fed by a real policy.

h2 floods h1 with UDP (tests/fleet/blast.c); h1's policy logs those packets at tc ingress
(log.match keeps SSH and everything else out of the log). Asserted:
- kill -9 of the agent's worker twice under the flood: the supervisor restarts it, and
  afterwards the log holds every record the kernel emitted exactly once (lines == the
  kernel's records_emitted, no (ts, port) twice, every line whole JSON), and the facts say
  records_lost_kernel for what did not fit in the ring;
- size rotation with `keep`: never more than keep rotated files, all lines whole;
- logrotate with copytruncate and with create + postrotate SIGHUP: records go on into the
  new file, nothing half-written;
- the Prometheus textfile, scraped from a real prometheus-node-exporter started inside h1
  (its own network namespace, loopback only), matches the facts.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fleet"))

LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
LAB_HOSTS = 2
AGENT = "/usr/lib/bpfleet/agent/bpfleet-agent"
LOG_FILE = "/var/log/bpfleet/flood.jsonl"
TEXTFILE_DIR = "/var/lib/bpfleet/node-exporter"      # per lab host (/var/lib/bpfleet is)
PORT = 7300
FLOOD_PPS = 30000
FLOOD_SECONDS = 6

POLICY = {
    "name": "ag-flood",
    "interfaces": ["eth0"],
    "log": {
        "fields": ["action", "rule", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "len"],
        "directions": ["ingress"],
        "match": [{"proto": "udp", "port": PORT}],
        "sink": {"file": LOG_FILE, "max_size": "1G", "keep": 2},
    },
}


@pytest.fixture(scope="module")
def fleet(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}],
                 extra=["-e", json.dumps({"bpfleet_host_agent_textfile_dir": TEXTFILE_DIR,
                                          "bpfleet_host_agent_status_interval": 0.5})])
    outcome = lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": POLICY}}], hosts="h1")
    assert outcome["h1"][0]["changed"]
    return lab


def agent_status(lab) -> dict:
    result = lab.exec("h1", AGENT, "status", check=False)
    return json.loads(result.stdout)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def facts(lab) -> dict:
    outcome = lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {}}], hosts="h1")
    return outcome["h1"][0]["ansible_facts"]["bpfleet"]


def log_lines(lab, pattern: str = LOG_FILE + "*") -> list[str]:
    return lab.exec("h1", "sh", "-c", f"cat {pattern} 2>/dev/null || true").stdout.splitlines()


def flood(lab, seconds: float = FLOOD_SECONDS, pps: int = FLOOD_PPS) -> subprocess.Popen:
    import blast

    h1 = lab.hosts["h1"]
    return subprocess.Popen(
        [sys.executable, str(LAB), "exec", "--name", lab.name, "--host", "h2", "--", str(blast.binary()),
         *blast.options_argv(dict(iface="eth0", src=lab.hosts["h2"]["lab_ipv4"], dst=h1["lab_ipv4"],
                                  dst_mac=h1["lab_mac"], dport=PORT, sports=1000, rate=pps, duration=seconds,
                                  mode="packet"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def settled(lab) -> dict:
    """The h1 log facts once the ring buffer is drained (records_written stops moving)."""
    last = None
    for _attempt in range(40):
        current = facts(lab)["policies"][POLICY["name"]]
        if last is not None and current["log"]["records_written"] == last["log"]["records_written"] \
                and current["log"]["state"] == "running":
            return current
        last = current
        time.sleep(1)
    raise AssertionError(f"the agent did not settle: {last}")


def test_kill_9_under_load_loses_and_duplicates_nothing(fleet):
    lab = fleet
    before = facts(lab)
    assert before["agent"]["state"] == "running"
    assert before["agent"]["mode"] == "daemon"
    sender = flood(lab)
    killed = []
    try:
        for delay in (2.0, 2.0):
            time.sleep(delay)
            pid = agent_status(lab)["pid"]
            assert pid, agent_status(lab)
            lab.exec("h1", "kill", "-9", str(pid))
            killed.append(pid)
        out, err = sender.communicate(timeout=FLOOD_SECONDS + 60)
        assert sender.returncode == 0, err
    finally:
        if sender.poll() is None:
            sender.kill()
    wait_for(lambda: agent_status(lab)["pid"] not in (None, *killed), what="a restarted worker")
    policy = settled(lab)
    counters = policy["counters"]
    lines = log_lines(lab)
    records = [json.loads(line) for line in lines]      # a partial line would fail here
    keys = {(record["ts"], record["src_port"]) for record in records}
    sent = json.loads(out.strip().splitlines()[-1])["sent"]
    print(f"flood {sent} packets at {FLOOD_PPS}/s, agent killed twice: {len(records)} records written, "
          f"{counters['records_emitted']} emitted, {counters['records_lost']} lost in the kernel")
    assert len(keys) == len(records), "duplicate records after kill -9"
    assert all(record["dst_port"] == PORT for record in records)
    assert len(records) == counters["records_emitted"], (len(records), counters)
    assert len(records) + counters["records_lost"] >= sent * 0.9        # tc sees what arrived at h1
    assert policy["log"]["records_lost_user"] == 0
    assert policy["log"]["records_lost_kernel"] == counters["records_lost"]
    log = lab.exec("h1", "cat", "/var/log/bpfleet/agent.log").stdout
    assert log.count("restarting in") >= 2, log[-3000:]


def test_textfile_served_by_node_exporter_matches_the_facts(fleet):
    lab = fleet
    if not shutil.which("prometheus-node-exporter"):
        pytest.skip("prometheus-node-exporter not installed (scripts/bootstrap.sh installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = subprocess.Popen(
        [sys.executable, str(LAB), "exec", "--name", lab.name, "--host", "h1", "--", "timeout", "120",
         "prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={TEXTFILE_DIR}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # node_exporter listens in h1's network namespace: scrape it from there.
        scrape = ["python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
                  f"'http://127.0.0.1:{port}/metrics', timeout=3).read().decode())"]
        body = wait_for(lambda: lab.exec("h1", *scrape, check=False).stdout, what="node_exporter answering")
        current = settled(lab)
        body = lab.exec("h1", *scrape).stdout
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    assert "node_textfile_scrape_error 0" in body
    name = POLICY["name"]

    def sample(metric, labels):
        match = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(metric), re.escape(labels)), body, re.M)
        assert match, f"{metric}{{{labels}}} not in:\n{body[-3000:]}"
        return float(match.group(1))

    assert sample("bpfleet_records_lost_total", f'policy="{name}",where="kernel"') \
        == current["counters"]["records_lost"]
    assert sample("bpfleet_records_emitted_total", f'policy="{name}"') == current["counters"]["records_emitted"]
    assert sample("bpfleet_records_lost_total", f'policy="{name}",where="agent"') == 0
    assert sample("bpfleet_records_total", f'policy="{name}"') == current["log"]["records_written"]
    assert sample("bpfleet_policy_logging", f'policy="{name}"') == 1
    default = sample("bpfleet_packets_total", f'action="pass",iface="eth0",policy="{name}",rule="default"')
    assert default >= current["log"]["records_written"]
    assert re.search(r'^bpfleet_agent_info\{host="h1",version="[^"]+"\} 1$', body, re.M)


def test_rotation_keeps_n_files_and_logrotate_works(fleet):
    lab = fleet
    small = json.loads(json.dumps(POLICY))
    small["log"]["sink"].update({"max_size": "256K", "keep": 2})
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": small}}], hosts="h1")
    sender = flood(lab, seconds=4, pps=20000)
    sender.communicate(timeout=70)
    settled(lab)
    listing = lab.exec("h1", "ls", "/var/log/bpfleet").stdout.split()
    rotated = sorted(name for name in listing if name.startswith("flood.jsonl."))
    assert rotated == ["flood.jsonl.1", "flood.jsonl.2"], listing
    for line in log_lines(lab):
        json.loads(line)
    sizes = lab.exec("h1", "sh", "-c", f"stat -c %s {LOG_FILE}.1 {LOG_FILE}.2").stdout.split()
    assert all(256 * 1024 <= int(size) < 256 * 1024 + 1024 * 1024 for size in sizes), sizes

    # logrotate: copytruncate (the agent keeps its fd; O_APPEND writes land at the new end),
    # then create + postrotate SIGHUP (the agent reopens the path).
    big = json.loads(json.dumps(POLICY))
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": big}}], hosts="h1")
    lab.exec("h1", "sh", "-c", f"rm -f {LOG_FILE}*")
    status_dir = "/var/lib/bpfleet/logrotate"
    # The daemon's supervisor (pid file) forwards SIGHUP to the worker; under systemd it is
    # `systemctl reload bpfleet-agent`.
    for mode, options in (("copytruncate", "copytruncate"),
                          ("sighup", "create 0640 root root\n  postrotate\n    kill -HUP $(cat /run/bpfleet/agent.pid)"
                                     "\n  endscript")):
        config = f"{LOG_FILE} {{\n  rotate 3\n  missingok\n  nocompress\n  {options}\n}}\n"
        lab.exec("h1", "sh", "-c", f"mkdir -p {status_dir} && cat > {status_dir}/{mode}.conf <<'EOF'\n{config}EOF")
        sender = flood(lab, seconds=4, pps=5000)
        time.sleep(2)
        lab.exec("h1", "logrotate", "-f", "-s", f"{status_dir}/{mode}.state", f"{status_dir}/{mode}.conf")
        sender.communicate(timeout=70)
        settled(lab)
        current = log_lines(lab, LOG_FILE)
        rotated = log_lines(lab, LOG_FILE + ".1")
        assert current and rotated, (mode, len(current), len(rotated))
        for line in current + rotated:
            json.loads(line)
        lab.exec("h1", "sh", "-c", f"rm -f {LOG_FILE}.*")
