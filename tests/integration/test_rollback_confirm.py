"""Last good policy, rollback and commit-confirmed on real hosts over SSH.

In file order against one fleet: h1 gets version A, then B (a new program and one more
denied address); the rollback must re-attach A's pinned programs without compiling and
restore the list. Then commit-confirmed: a confirmed change stays, and a change that cuts
the controller off (lockout guard forced) is undone by the timer on the host.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

LAB_HOSTS = 3
BASE_POLICY = yaml.safe_load((REPO / "playbooks" / "policies" / "lab-edge.yml").read_text())
NAME = BASE_POLICY["name"]
CONFIRM_TIMEOUT = 12
# Long enough that the controller sees the lockout before the host undoes it, on a loaded machine.
LOCKOUT_TIMEOUT = 30


def policy_task(policy: dict, **extra) -> dict:
    return {"name": "apply", "bpfleet.core.policy": {"policy": policy, **extra}}


def version_b(lab) -> dict:
    """A new program (a port rule) and h2's allowed address denied."""
    policy = copy.deepcopy(BASE_POLICY)
    policy["filter"]["deny"].append(lab.hosts["h2"]["lab_ipv4"] + "/32")
    policy["filter"]["ports"] = [{"name": "no-telnet", "proto": "tcp", "port": 23, "action": "drop"}]
    return policy


def run(lab, tasks: list, host: str = "h1", **kwargs) -> list:
    return lab.playbook(tasks, hosts=host, **kwargs)[host]


def facts(lab, host: str = "h1") -> dict:
    return run(lab, [{"name": "facts", "bpfleet.core.bpfleet_facts": {}}], host)[0]["ansible_facts"]["bpfleet"]


def xdp_prog_id(lab, host: str = "h1"):
    link = json.loads(lab.exec(host, "ip", "-d", "-j", "link", "show", "dev", "eth0").stdout)[0]
    return (link.get("xdp") or {}).get("prog", {}).get("id")


def ssh_works(lab, host: str = "h1") -> bool:
    """A fresh SSH connection from the controller (no shared master), as an operator would try."""
    workdir = f"/tmp/bpfleet-lab/{lab.name}"
    # No pipes: the ProxyCommand (nc) inherits ssh's stdout and stderr and may outlive a failed
    # ssh, and waiting for a captured pipe to close would then wait for nc, not for ssh.
    try:
        result = subprocess.run(["ssh", "-F", f"{workdir}/ssh_config", "-o", "ControlMaster=no", "-o",
                                 "ControlPath=none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", host, "true"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def close_master(lab, host: str = "h1") -> None:
    """The SSH master's TCP connection lost its controller-to-host half: start afresh after."""
    address = lab.hosts[host]["ansible_host"]
    subprocess.run(["ssh", "-o", f"ControlPath=/tmp/bpfleet-lab/{lab.name}/cp/{address}-22-root", "-O", "exit", "x"],
                   capture_output=True, timeout=20, check=False)


@pytest.fixture(scope="module")
def prepared(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}])
    first = run(lab, [policy_task(BASE_POLICY)])[0]
    assert first["history"]["good"] is None, "a first apply has nothing to roll back to"
    return lab


def test_change_keeps_the_previous_version_as_last_good(prepared):
    lab = prepared
    a_digest = facts(lab)["policies"][NAME]["policy"]["source_digest"]
    lab.a_xdp_id = xdp_prog_id(lab)
    h1 = lab.hosts["h1"]["lab_ipv4"]
    assert lab.udp_delivered("h2", lab.hosts["h2"]["lab_ipv4"], "h1", h1) == 10
    result = run(lab, [policy_task(version_b(lab))])[0]
    assert result["changed"] and result["compiled"]
    assert result["history"]["good"]["source_digest"] == a_digest
    assert result["policy"]["source_digest"] != a_digest
    assert xdp_prog_id(lab) != lab.a_xdp_id
    assert lab.udp_delivered("h2", lab.hosts["h2"]["lab_ipv4"], "h1", h1) == 0
    pins = lab.exec("h1", "ls", f"/sys/fs/bpf/bpfleet/{NAME}").stdout.split()
    assert "prog_xdp_good" in pins, pins


def live_state(lab, host: str = "h1") -> dict:
    """What a rollback would change on the host: the attached program, the pins, the entries of
    the list maps, the digests the facts report and the state files."""
    pin_dir = f"/sys/fs/bpf/bpfleet/{NAME}"
    maps = {}
    for name in lab.exec(host, "ls", f"{pin_dir}/maps").stdout.split():
        if name.startswith(("deny_", "allow_")):
            dumped = json.loads(lab.exec(host, "bpftool", "-j", "map", "dump", "pinned",
                                         f"{pin_dir}/maps/{name}").stdout)
            maps[name] = sorted(json.dumps(entry, sort_keys=True) for entry in dumped)
    policy = facts(lab, host)["policies"][NAME]["policy"]
    state = lab.exec(host, "sh", "-c", f"cd /var/lib/bpfleet/{NAME} && find . -type f | sort | xargs sha256sum").stdout
    return {"xdp": xdp_prog_id(lab, host), "pins": sorted(lab.exec(host, "ls", pin_dir).stdout.split()),
            "maps": maps, "source_digest": policy["source_digest"], "maps_digest": policy["maps_digest"],
            "state_files": state}


def test_rollback_check_mode_changes_nothing(prepared):
    lab = prepared
    before = live_state(lab)
    assert before["maps"].get("deny_v4"), "version B denies addresses: its deny_v4 map cannot be empty"
    result = run(lab, [{"name": "rollback", "bpfleet.core.policy_rollback": {"name": NAME}}], check=True)[0]
    assert result["changed"] is True
    assert result["compiled"] is False and result["reused_pins"] is True
    after = live_state(lab)
    for key in before:
        assert after[key] == before[key], f"check mode changed {key}: {before[key]!r} -> {after[key]!r}"
    # Version B still filters: h2's address stays denied.
    assert lab.udp_delivered("h2", lab.hosts["h2"]["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 0


def test_rollback_reattaches_the_pinned_program_without_compiling(prepared):
    lab = prepared
    result = run(lab, [{"name": "rollback", "bpfleet.core.policy_rollback": {"name": NAME}}])[0]
    assert result["changed"] is True
    assert result["compiled"] is False
    assert result["reused_pins"] is True
    assert result["prog_ids"]["xdp"] == lab.a_xdp_id
    assert xdp_prog_id(lab) == lab.a_xdp_id
    state = facts(lab)["policies"][NAME]
    assert state["healthy"], state["drift"]
    assert state["policy"]["source_digest"] == result["policy"]["source_digest"]
    # The list came back too: h2's allowed address passes again.
    assert lab.udp_delivered("h2", lab.hosts["h2"]["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 10
    # The same policy applied again is a no-op (state, maps and pins all agree).
    again = run(lab, [policy_task(BASE_POLICY)])[0]
    assert again["changed"] is False and again["compiled"] is False


def test_rollback_again_is_a_no_op(prepared):
    result = run(prepared, [{"name": "rollback", "bpfleet.core.policy_rollback": {"name": NAME}}])[0]
    assert result["changed"] is False
    assert result["compiled"] is False


def test_confirmed_change_stays(prepared):
    lab = prepared
    result = run(lab, [policy_task(version_b(lab), confirm_timeout=CONFIRM_TIMEOUT),
                       {"name": "confirm", "bpfleet.core.policy_confirm": {"name": NAME, "require_pending": True}}])
    assert result[0]["history"]["pending"]["timeout_s"] == CONFIRM_TIMEOUT
    assert result[1]["changed"] is True
    b_digest = result[0]["policy"]["source_digest"]
    time.sleep(CONFIRM_TIMEOUT + 3)
    assert facts(lab)["policies"][NAME]["policy"]["source_digest"] == b_digest
    again = run(lab, [{"name": "confirm", "bpfleet.core.policy_confirm": {"name": NAME}}])[0]
    assert again["changed"] is False


def test_unconfirmed_lockout_is_undone_by_the_host(prepared):
    lab = prepared
    before = facts(lab)["policies"][NAME]["policy"]
    lockout = copy.deepcopy(BASE_POLICY)
    lockout["filter"]["deny"].append(lab.hosts["h1"]["lab_ipv4"].rsplit(".", 1)[0] + ".1/32")  # the controller
    started = time.monotonic()
    play = [{"name": "lockout", "hosts": "h1", "gather_facts": False, "tasks": [
        {"name": "cut myself off", "bpfleet.core.policy": {
            "policy": lockout, "allow_lockout": True, "confirm_timeout": LOCKOUT_TIMEOUT}}]}]
    path = lab.tmp / "lockout.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".tmp" / "collections"),
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    # The module's answer cannot come back while the filter drops the controller's packets, so
    # the play runs in the background; it finishes once the host has restored itself.
    applied = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory),
                                str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        pending = f"/var/lib/bpfleet/{NAME}/pending.json"
        while lab.exec("h1", "test", "-e", pending, check=False).returncode != 0:
            assert applied.poll() is None, applied.stdout.read()
            assert time.monotonic() - started < 120, "the lockout policy was never applied"
            time.sleep(0.5)
        locked_at = time.monotonic()
        assert not ssh_works(lab), "the controller's address is denied: a new SSH connection must fail"
        assert time.monotonic() - locked_at < LOCKOUT_TIMEOUT
        while time.monotonic() - locked_at < LOCKOUT_TIMEOUT + 60 and not ssh_works(lab):
            time.sleep(1)
        assert ssh_works(lab), "the host did not restore its last good policy after the confirm timeout"
        assert time.monotonic() - locked_at >= LOCKOUT_TIMEOUT - 5
        applied.wait(timeout=120)
    finally:
        if applied.poll() is None:
            applied.kill()
    close_master(lab)
    after = facts(lab)["policies"][NAME]
    assert after["policy"]["source_digest"] == before["source_digest"]
    assert after["policy"]["maps_digest"] == before["maps_digest"]
    assert after["healthy"], after["drift"]
    log = lab.exec("h1", "cat", f"/var/log/bpfleet/confirm-{NAME}.log").stdout
    assert "rolled back to" in log, log
    events = run(lab, [{"name": "confirm", "bpfleet.core.policy_confirm": {"name": NAME}}])[0]["events"]
    assert events[-1]["event"] == "rollback" and "confirm timeout" in events[-1]["reason"], events
