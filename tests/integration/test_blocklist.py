"""bpfleet.core.blocklist on real hosts over SSH: live deny/allow edits of a running policy.

h1 carries the policy (and, from the fleet-wide test on, h2 and h3 too). h3 sends from its
allowed address (203.0.113.13), which the tests block and unblock, and from its denied alias.
The tests run in file order against one fleet; each leaves the state the next expects.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

LAB_HOSTS = 3
POLICY_FILE = REPO / "playbooks" / "policies" / "lab-edge.yml"
POLICY = yaml.safe_load(POLICY_FILE.read_text())
NAME = POLICY["name"]


def policy_task(**extra) -> dict:
    return {"name": "policy", "bpfleet.core.policy": {"policy": POLICY, **extra}}


def block_task(entries: list, **extra) -> dict:
    return {"name": "blocklist", "bpfleet.core.blocklist": {"policy": NAME, "entries": entries, **extra}}


def one(outcome: dict, host: str = "h1", index: int = 0) -> dict:
    return outcome[host][index]


def xdp_prog_id(lab, host: str):
    link = json.loads(lab.exec(host, "ip", "-d", "-j", "link", "show", "dev", "eth0").stdout)[0]
    return (link.get("xdp") or {}).get("prog", {}).get("id")


def facts(lab, host: str = "h1") -> dict:
    outcome = lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {}}], hosts=host)
    return one(outcome, host)["ansible_facts"]["bpfleet"]["policies"][NAME]


def deny_packets(lab, host: str = "h1") -> int:
    return facts(lab, host)["counters"]["rules"]["deny"]["packets"]


def delivered(lab, src_key: str = "lab_ipv4", receiver: str = "h1") -> int:
    h3 = lab.hosts["h3"]
    dst_key = "lab_ipv6" if src_key == "lab_ipv6" else "lab_ipv4"
    return lab.udp_delivered("h3", h3[src_key], receiver, lab.hosts[receiver][dst_key])


@pytest.fixture(scope="module")
def prepared(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}])
    lab.playbook([policy_task()], hosts="h1")
    return lab


def test_invalid_entries_fail_on_the_controller_with_paths(prepared):
    lab = prepared
    outcome = lab.playbook([block_task(["10.0.0.300/24", "10.0.0.1/24", "2001:db8::/129"])], hosts="h1",
                           expect_failure=True)
    message = one(outcome)["msg"]
    assert "entries[0]: not an IP network: 10.0.0.300/24" in message
    assert "entries[1]: host bits set in 10.0.0.1/24 (did you mean 10.0.0.0/24?)" in message
    assert "entries[2]: not an IP network: 2001:db8::/129" in message
    assert lab.exec("h1", "test", "-e", f"/var/lib/bpfleet/{NAME}/live_edits.json", check=False).returncode == 1


def test_a_policy_that_is_not_applied_is_named(prepared):
    lab = prepared
    outcome = lab.playbook([{"bpfleet.core.blocklist": {"policy": "nope", "entries": ["192.0.2.1"]}}],
                           hosts="h1", expect_failure=True)
    assert "policy 'nope' is not applied on this host" in one(outcome)["msg"]


def test_check_mode_reports_and_changes_nothing(prepared):
    lab = prepared
    h3_ip = lab.hosts["h3"]["lab_ipv4"]
    result = one(lab.playbook([block_task([h3_ip])], hosts="h1", check=True, extra=["--diff"]))
    assert result["changed"] is True
    assert result["changes"] == [{"map": "deny_v4", "added": 1, "removed": 0, "added_sample": [h3_ip + "/32"],
                                  "removed_sample": []}]
    assert result["lockout"]["dropped"] is False
    assert delivered(lab) == 10, "check mode changed the maps"
    assert lab.exec("h1", "test", "-e", f"/var/lib/bpfleet/{NAME}/live_edits.json", check=False).returncode == 1


def test_block_drops_and_is_idempotent_and_counted(prepared):
    lab = prepared
    h3_ip = lab.hosts["h3"]["lab_ipv4"]
    prog = xdp_prog_id(lab, "h1")
    before = deny_packets(lab)
    assert delivered(lab) == 10
    result = one(lab.playbook([block_task([h3_ip])], hosts="h1"))
    assert result["changed"] is True
    assert result["live_edits"]["deny_v4"] == {"added": 1, "removed": 0}
    assert delivered(lab) == 0, "a blocked source still got through"
    assert xdp_prog_id(lab, "h1") == prog, "a live edit must not replace the program"
    again = one(lab.playbook([block_task([h3_ip + "/32"])], hosts="h1"))
    assert again["changed"] is False and again["changes"] == []
    assert deny_packets(lab) >= before + 10, "the deny rule counts the blocked packets on top of the earlier ones"
    assert facts(lab)["live_edits"]["deny_v4"] == {"added": 1, "removed": 0}


def test_next_policy_run_keeps_the_edit_without_compiling(prepared):
    lab = prepared
    prog = xdp_prog_id(lab, "h1")
    counted = deny_packets(lab)
    result = one(lab.playbook([policy_task()], hosts="h1"))
    assert result["changed"] is False, result.get("plan")
    assert result["compiled"] is False
    assert xdp_prog_id(lab, "h1") == prog
    assert delivered(lab) == 0, "the policy run reverted the live edit"
    assert deny_packets(lab) >= counted + 10, "counters survive the policy run"


def test_unblock_passes_again(prepared):
    lab = prepared
    h3_ip = lab.hosts["h3"]["lab_ipv4"]
    result = one(lab.playbook([block_task([h3_ip], state="absent")], hosts="h1", extra=["--diff"]))
    assert result["changed"] is True
    assert result["changes"][0]["removed_sample"] == [h3_ip + "/32"]
    assert delivered(lab) == 10
    assert lab.exec("h1", "test", "-e", f"/var/lib/bpfleet/{NAME}/live_edits.json", check=False).returncode == 1, \
        "unblocking a live addition leaves no record behind"
    assert one(lab.playbook([block_task([h3_ip], state="absent")], hosts="h1"))["changed"] is False


def test_removing_a_policy_entry_is_kept_then_discarded(prepared):
    """Unblocking a prefix the policy itself denies: kept by the next run, reverted by discard."""
    lab = prepared
    alt_net = "198.51.100.0/24"  # on the policy's deny list; h3's alias lives in it
    prog = xdp_prog_id(lab, "h1")
    assert delivered(lab, "lab_ipv4_alt") == 0
    result = one(lab.playbook([block_task([alt_net], state="absent")], hosts="h1"))
    assert result["changed"] is True and result["live_edits"]["deny_v4"] == {"added": 0, "removed": 1}
    assert delivered(lab, "lab_ipv4_alt") == 10
    kept = one(lab.playbook([policy_task()], hosts="h1"))
    assert kept["changed"] is False and delivered(lab, "lab_ipv4_alt") == 10
    counted = deny_packets(lab)
    discarded = one(lab.playbook([policy_task(live_edits="discard")], hosts="h1"))
    assert discarded["changed"] is True and discarded["compiled"] is False
    assert discarded["map_changes"] == [{"map": "deny_v4", "added": 1, "removed": 0, "added_sample": [alt_net],
                                         "removed_sample": []}]
    assert xdp_prog_id(lab, "h1") == prog
    assert delivered(lab, "lab_ipv4_alt") == 0
    assert deny_packets(lab) >= counted + 10
    assert facts(lab)["live_edits"]["deny_v4"] == {"added": 0, "removed": 0}
    assert one(lab.playbook([policy_task(live_edits="discard")], hosts="h1"))["changed"] is False


def test_ipv6_block_and_discard(prepared):
    lab = prepared
    h3_v6 = lab.hosts["h3"]["lab_ipv6"]
    assert delivered(lab, "lab_ipv6") == 10
    result = one(lab.playbook([block_task([h3_v6 + "/128"])], hosts="h1"))
    assert result["changes"][0]["map"] == "deny_v6"
    assert delivered(lab, "lab_ipv6") == 0
    one(lab.playbook([policy_task(live_edits="discard")], hosts="h1"))
    assert delivered(lab, "lab_ipv6") == 10


def test_lockout_guard_refuses_blocking_the_controller(prepared):
    lab = prepared
    controller = "203.0.113.1"
    for check in (True, False):
        outcome = lab.playbook([block_task(["203.0.113.0/24"])], hosts="h1", check=check, expect_failure=True)
        message = one(outcome)["msg"]
        assert message.startswith("lockout guard: this edit would drop the controller's SSH connection from "
                                  f"{controller} (the deny entry 203.0.113.0/24 contains it)"), message
    assert delivered(lab) == 10, "the refused edit changed the map"
    # Allow-listed first, the same edit passes the guard (and is undone by discarding live edits).
    allowed = one(lab.playbook([block_task([controller], list="allow"),
                                block_task(["203.0.113.0/24"])], hosts="h1"), index=1)
    assert allowed["lockout"] == {"controller": controller, "dropped": False,
                                  "reason": "allowed by the allow entry 203.0.113.1/32"}
    assert delivered(lab) == 0
    refused = lab.playbook([block_task([controller], list="allow", state="absent")], hosts="h1",
                           expect_failure=True)
    assert "removing the allow entry 203.0.113.1/32 leaves it to the deny entry 203.0.113.0/24" in one(refused)["msg"]
    one(lab.playbook([policy_task(live_edits="discard")], hosts="h1"))
    assert delivered(lab) == 10


def test_lockout_guard_judges_port_rules_as_the_kernel_does(prepared):
    """Under a port rule that drops SSH, the allow entry that lets the controller in is what keeps
    the fleet reachable: removing it is refused (issue 15; the guard used to ignore port rules)."""
    lab = prepared
    controller = "203.0.113.1"
    no_ssh = copy.deepcopy(POLICY)
    no_ssh["filter"]["ports"] = [{"name": "no-ssh", "proto": "tcp", "port": 22, "action": "drop"}]
    no_ssh["filter"]["allow"] = [controller + "/32"]
    one(lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": no_ssh}}], hosts="h1"))
    for check in (True, False):
        refused = lab.playbook([block_task([controller], list="allow", state="absent")], hosts="h1", check=check,
                               expect_failure=True)
        message = one(refused)["msg"]
        assert message.startswith("lockout guard: this edit would drop the controller's SSH connection from "
                                  f"{controller} (removing the allow entry {controller}/32 leaves it to port rule "
                                  "no-ssh, which drops TCP port 22)"), message
    # Still reachable: the refused edit changed nothing.
    one(lab.playbook([policy_task(live_edits="discard")], hosts="h1"))
    assert delivered(lab) == 10


def test_block_one_address_across_the_fleet_in_one_short_task(prepared):
    """One task blocks an address on every host. How short that task is, is
    measured against a stated bound by the benchmark (tests/bench/fleet_ops.py), not here: a
    shared test machine's timing proves nothing either way."""
    lab = prepared
    lab.playbook([policy_task()])
    target = lab.hosts["h3"]["lab_ipv4"]
    outcome = lab.playbook([block_task([target])])
    for host in ("h1", "h2", "h3"):
        assert one(outcome, host)["changed"] is True
        assert one(outcome, host)["live_edits"]["deny_v4"] == {"added": 1, "removed": 0}
    assert delivered(lab, receiver="h1") == 0
    assert delivered(lab, receiver="h2") == 0
    lab.playbook([block_task([target], state="absent")])
    assert delivered(lab, receiver="h2") == 10
