"""The health model on real lab hosts (docs/facts.md, "Health"): real kernel, real SSH, real traffic.

h1 runs a policy that logs UDP to port 7400 at tc ingress into /var/log/bpfleet/full/health.jsonl;
the agent judges loss over a 20 s window with a point of history every 2 s (role variables),
and the facts use the agent's window. Each cause turns h1 unhealthy or degraded with the right
problem in the facts and in the fleet report (and the agent's Prometheus textfile for what the
agent sees), and each clears by itself once the cause is gone:
- a detached XDP program (ip link set dev eth0 xdp off), repaired by the next policy run;
- a stopped agent, started again; a stuck one (SIGSTOP), continued;
- a full sink: a 1 MiB tmpfs mounted on /var/log/bpfleet/full, filled by a flood; the file is
  removed afterwards and nothing else is done;
- a flood that overruns the ring buffer (records lost in the kernel).
And playbooks/rollout.yml's health check fails on a stopped agent through the model, and passes
once it runs again.
"""

from __future__ import annotations

import json
import os
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
TEXTFILE = "/var/lib/bpfleet/node-exporter/bpfleet.prom"       # per lab host (/var/lib/bpfleet is)
SINK_DIR = "/var/log/bpfleet/full"
LOG_FILE = SINK_DIR + "/health.jsonl"
PORT = 7400
WINDOW_S = 20
SAMPLE_S = 2
# Clearing takes the window plus up to two sample intervals, plus a facts run or two.
CLEAR_TIMEOUT_S = WINDOW_S + 2 * SAMPLE_S + 40

POLICY = {
    "name": "hl-web",
    "interfaces": ["eth0"],
    "log": {
        "fields": ["action", "rule", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "len"],
        "directions": ["ingress"],
        "match": [{"proto": "udp", "port": PORT}],
        "sink": {"file": LOG_FILE},
    },
}


@pytest.fixture(scope="module")
def fleet(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}],
                 extra=["-e", json.dumps({"bpfleet_host_agent_health_window": WINDOW_S,
                                          "bpfleet_host_agent_health_sample_interval": SAMPLE_S,
                                          "bpfleet_host_agent_textfile_dir": TEXTFILE.rsplit("/", 1)[0],
                                          "bpfleet_host_agent_status_interval": 0.5})])
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": POLICY}}], hosts="h1")
    return lab


def observe(lab) -> tuple[dict, dict]:
    """(h1's bpfleet facts, h1's entry in the fleet report), both from one real playbook run."""
    outcome = lab.playbook([
        {"name": "facts", "bpfleet.core.bpfleet_facts": {}},
        {"name": "report", "run_once": True, "ansible.builtin.set_fact": {
            "bpfleet_it_report": "{{ hostvars | bpfleet.core.fleet_report(ansible_play_hosts_all | sort) }}"}},
    ])
    facts = outcome["h1"][0]["ansible_facts"]["bpfleet"]
    report = outcome["h1"][1]["ansible_facts"]["bpfleet_it_report"]
    entry = next(host for host in report["hosts"] if host["host"] == "h1")
    entry["summary"] = report["summary"]
    return facts, entry


def codes(health: dict) -> set:
    return {problem["code"] for problem in health["problems"]}


def wait_until(lab, predicate, timeout: float, what: str) -> tuple[dict, dict]:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        facts, entry = observe(lab)
        if predicate(facts, entry):
            print(f"{what}: after {time.monotonic() - started:.1f} s")
            return facts, entry
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: "
                                 f"{json.dumps(facts['health'], indent=1)[:4000]}")
        time.sleep(1)


def healthy(facts, entry) -> bool:
    return facts["health"]["status"] == "healthy" and entry["status"] == "healthy"


def assert_problem(facts, entry, code, text, statuses=("unhealthy",)):
    """The problem is in the facts (host and policy) and in the report, with its text."""
    assert facts["health"]["status"] in statuses, facts["health"]
    found = [p for p in facts["health"]["problems"] if p["code"] == code]
    assert found, facts["health"]
    assert any(text in p["message"] for p in found), found
    policy = facts["policies"][POLICY["name"]]
    assert code in codes(policy["health"]), policy["health"]
    assert policy["healthy"] is (policy["health"]["status"] != "unhealthy")
    assert entry["status"] == facts["health"]["status"]
    assert any(text in line for line in entry["problems"]), entry["problems"]
    if facts["health"]["status"] == "unhealthy":
        assert "h1" in entry["summary"]["unhealthy_hosts"]
    else:
        assert "h1" in entry["summary"]["degraded_hosts"]


def textfile(lab) -> str:
    return lab.exec("h1", "cat", TEXTFILE).stdout


def start_flood(lab, seconds: float, pps: int) -> subprocess.Popen:
    """h2 floods h1's UDP port PORT (tests/fleet/blast.c, packet mode)."""
    import blast

    h1 = lab.hosts["h1"]
    return subprocess.Popen(
        [sys.executable, str(LAB), "exec", "--name", lab.name, "--host", "h2", "--", str(blast.binary()),
         *blast.options_argv(dict(iface="eth0", src=lab.hosts["h2"]["lab_ipv4"], dst=h1["lab_ipv4"],
                                  dst_mac=h1["lab_mac"], dport=PORT, sports=1000, rate=pps, duration=seconds,
                                  mode="packet"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def flood(lab, seconds: float, pps: int) -> dict:
    import blast

    sender = start_flood(lab, seconds, pps)
    out, err = sender.communicate(timeout=seconds + 60)
    assert sender.returncode == 0, err
    return blast.parse_report(out)


def test_a_fresh_host_is_healthy(fleet):
    facts, entry = wait_until(fleet, healthy, CLEAR_TIMEOUT_S, "healthy at start")
    assert facts["health"]["window_s"] == WINDOW_S
    assert facts["health"]["rollout_ok"] is True
    assert facts["policies"][POLICY["name"]]["health"]["loss"]["kernel"]["known"] is True


def test_detached_program(fleet):
    lab = fleet
    lab.exec("h1", "ip", "link", "set", "dev", "eth0", "xdp", "off")
    facts, entry = observe(lab)
    assert_problem(facts, entry, "drift", "eth0: xdp program is not attached")
    assert facts["health"]["rollout_ok"] is False
    # Cause gone: the next policy run re-attaches the pinned program; nothing is sticky.
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": POLICY}}], hosts="h1")
    facts, entry = observe(lab)
    assert healthy(facts, entry), facts["health"]


def test_stopped_agent(fleet):
    lab = fleet
    lab.exec("h1", AGENT, "stop")
    try:
        facts, entry = observe(lab)
        assert facts["agent"]["state"] == "stopped"
        assert_problem(facts, entry, "agent_stopped", "bpfleet-agent is not running")
    finally:
        lab.exec("h1", AGENT, "start")
    wait_until(lab, healthy, CLEAR_TIMEOUT_S, "healthy after the agent started")


def test_stuck_agent(fleet):
    lab = fleet
    pid = json.loads(lab.exec("h1", AGENT, "status").stdout)["pid"]
    lab.exec("h1", "kill", "-STOP", str(pid))
    try:
        time.sleep(16)
        facts, entry = observe(lab)
        assert facts["agent"]["state"] == "stale", facts["agent"]
        assert_problem(facts, entry, "status_stale", "bpfleet-agent has not updated its status for")
    finally:
        lab.exec("h1", "kill", "-CONT", str(pid))
    wait_until(lab, healthy, CLEAR_TIMEOUT_S, "healthy after the agent continued")


def test_full_sink(fleet):
    lab = fleet
    lab.exec("h1", "mkdir", "-p", SINK_DIR)
    lab.exec("h1", "mount", "-t", "tmpfs", "-o", "size=1m", "bpfleet-it-full", SINK_DIR)
    try:
        # The agent follows the file to the new file system at its next rescan (inode changed).
        time.sleep(3)
        sent = flood(lab, seconds=3, pps=20000)["sent"]
        facts, entry = wait_until(
            lab, lambda f, e: {"sink_failing", "records_lost_user"} <= codes(f["health"]), 30, "the full sink seen")
        print("full sink:", sent, "sent;", facts["health"]["messages"])
        assert_problem(facts, entry, "sink_failing", "No space left on device")
        assert_problem(facts, entry, "records_lost_user", "lost by the agent in the last %d s" % WINDOW_S)
        assert_problem(facts, entry, "disk_full", SINK_DIR)
        assert facts["policies"][POLICY["name"]]["log"]["error"].startswith("cannot write " + LOG_FILE)
        assert facts["health"]["rollout_ok"] is False
        metrics = textfile(lab)
        assert 'bpfleet_health{policy="hl-web"} 2\n' in metrics, metrics
        assert 'bpfleet_health_problem{policy="hl-web",code="sink_failing",severity="unhealthy"} 1' in metrics
        # Cause gone: the file is removed (space freed). Nothing else is done: no traffic, no
        # restart; the problems age out of the window.
        lab.exec("h1", "rm", "-f", LOG_FILE)
        facts, entry = observe(lab)
        assert "disk_full" not in codes(facts["health"]), facts["health"]
        freed = time.monotonic()
        wait_until(lab, healthy, CLEAR_TIMEOUT_S, "healthy after the sink was freed")
        assert time.monotonic() - freed <= CLEAR_TIMEOUT_S
        metrics = textfile(lab)
        assert 'bpfleet_health{policy="hl-web"} 0\n' in metrics and "bpfleet_health_problem" not in metrics
    finally:
        lab.exec("h1", "umount", "-l", SINK_DIR, check=False)


def kernel_loss_seen(facts, entry) -> bool:
    return "records_lost_kernel" in codes(facts["health"])


def test_flood_overruns_the_ring_buffer(fleet):
    lab = fleet
    report = flood(lab, seconds=4, pps=0)          # as fast as the sender can
    facts, entry = observe(lab)
    if not kernel_loss_seen(facts, entry):
        # On a loaded machine the sender may not outrun the agent: flood again with the agent's
        # worker paused for 3 s (an agent that cannot keep up), so the 4 MiB ring overruns.
        print("flood alone did not overrun the ring buffer:", report)
        pid = json.loads(lab.exec("h1", AGENT, "status").stdout)["pid"]
        sender = start_flood(lab, seconds=5, pps=0)
        time.sleep(1)
        lab.exec("h1", "kill", "-STOP", str(pid))
        time.sleep(3)
        lab.exec("h1", "kill", "-CONT", str(pid))
        out, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        print("flood with the agent paused for 3 s:", report)
    facts, entry = wait_until(lab, kernel_loss_seen, 30, "kernel loss seen")
    print("flood:", report, facts["health"]["messages"])
    assert_problem(facts, entry, "records_lost_kernel", "lost in the kernel in the last %d s" % WINDOW_S,
                   statuses=("degraded", "unhealthy"))
    loss = facts["policies"][POLICY["name"]]["health"]["loss"]["kernel"]
    assert loss["lost"] >= 100 and loss["offered"] > loss["lost"]
    # Records lost in the kernel are the traffic's, not the change's: not a rollout failure.
    assert not [p for p in facts["health"]["problems"] if p["code"] == "records_lost_kernel" and p["fails_rollout"]]
    assert facts["policies"][POLICY["name"]]["counters"]["records_lost"] >= loss["lost"]
    wait_until(lab, healthy, CLEAR_TIMEOUT_S, "healthy after the flood")
    # The lifetime counter still says what happened; the health no longer does.
    facts, _entry = observe(lab)
    assert facts["policies"][POLICY["name"]]["counters"]["records_lost"] >= loss["lost"]
    lab.exec("h1", "rm", "-f", LOG_FILE)


def rollout(lab, policy_file: Path) -> subprocess.CompletedProcess:
    """playbooks/rollout.yml on h1, as an operator runs it; only the model's check looks at the agent."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".tmp" / "collections"),
               ANSIBLE_HOST_KEY_CHECKING="false", ANSIBLE_RETRY_FILES_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory),
         str(REPO / "playbooks" / "rollout.yml"), "-e", json.dumps({
             "rollout_hosts": "h1", "rollout_policy": str(policy_file), "rollout_health_records": "false",
             "rollout_health_counters": False})],
        capture_output=True, text=True, timeout=600, env=env, check=False)


def test_rollout_health_check_uses_the_model(fleet):
    lab = fleet
    policy_file = lab.tmp / "hl-web.yml"
    policy_file.write_text(json.dumps(POLICY))
    lab.exec("h1", AGENT, "stop")
    try:
        result = rollout(lab, policy_file)
    finally:
        lab.exec("h1", AGENT, "start")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "health check failed on h1" in output, output[-3000:]
    print("rollout:", next(line.strip() for line in output.splitlines() if "health check failed" in line)[:600])
    assert "bpfleet-agent is not running" in output, output[-3000:]
    wait_until(lab, healthy, CLEAR_TIMEOUT_S, "healthy after the agent started")
    result = rollout(lab, policy_file)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
