"""The policy module on real hosts over SSH: apply, idempotence, check mode, list edits,
compile failures, drift, foreign programs, agent independence and removal.

The tests run in file order against one fleet; each leaves the state the next expects.
h1 is the protected host, h3 sends from its allowed and its denied addresses, h2 is used
for the foreign-program test.
"""

from __future__ import annotations

import copy
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".tmp" / "collections"

pytestmark = pytest.mark.integration

LAB_HOSTS = 3
POLICY_FILE = REPO / "playbooks" / "policies" / "lab-edge.yml"
BASE_POLICY = yaml.safe_load(POLICY_FILE.read_text())
AGENT = "/usr/lib/bpfleet/agent/bpfleet-agent"


def policy_task(policy: dict, **extra) -> dict:
    return {"name": "apply", "bpfleet.core.policy": {"policy": policy, **extra}, "register": "out"}


def facts_task() -> list:
    return [{"name": "facts", "bpfleet.core.bpfleet_facts": {}}]


def result_of(outcome: dict, host: str, index: int = 0) -> dict:
    return outcome[host][index]


def facts_of(lab, host: str) -> dict:
    outcome = lab.playbook(facts_task(), hosts=host)
    return result_of(outcome, host)["ansible_facts"]["bpfleet"]


def xdp_prog_id(lab, host: str):
    link = json.loads(lab.exec(host, "ip", "-d", "-j", "link", "show", "dev", "eth0").stdout)[0]
    return (link.get("xdp") or {}).get("prog", {}).get("id")


def with_extra_deny(cidr: str) -> dict:
    policy = copy.deepcopy(BASE_POLICY)
    policy["filter"]["deny"].append(cidr)
    return policy


@pytest.fixture(scope="module")
def prepared(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}])
    lab.playbook([policy_task(BASE_POLICY)])
    return lab


def test_first_apply_attaches_and_second_is_a_no_op(prepared):
    lab = prepared
    again = result_of(lab.playbook([policy_task(BASE_POLICY)]), "h1")
    assert again["changed"] is False
    assert again["compiled"] is False
    assert again["commands"] == []
    assert xdp_prog_id(lab, "h1") is not None
    h3 = lab.hosts["h3"]
    assert lab.udp_delivered("h3", h3["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 10
    assert lab.udp_delivered("h3", h3["lab_ipv4_alt"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 0


def test_invalid_policy_fails_with_paths_and_touches_nothing(prepared):
    lab = prepared
    bad = {"name": "broken", "interfaces": ["eth0"], "filter": {"deny": ["10.0.0.300/24"], "deny_list": []}}
    outcome = lab.playbook([policy_task(bad)], hosts="h1", expect_failure=True)
    message = result_of(outcome, "h1")["msg"]
    assert "<inline policy>: filter.deny[0]: not an IP network: 10.0.0.300/24" in message
    assert "filter.deny_list: unknown field (did you mean 'deny'?)" in message
    assert lab.exec("h1", "test", "-e", "/var/lib/bpfleet/broken", check=False).returncode == 1
    assert lab.exec("h1", "test", "-e", "/sys/fs/bpf/bpfleet/broken", check=False).returncode == 1


def test_interface_missing_on_the_host_fails_before_any_change(prepared):
    lab = prepared
    ghost = {"name": "ghost", "interfaces": ["eth9"], "filter": {"deny": ["198.51.100.0/24"]}}
    outcome = lab.playbook([policy_task(ghost)], hosts="h1", expect_failure=True)
    assert "interface eth9 does not exist on this host" in result_of(outcome, "h1")["msg"]
    assert lab.exec("h1", "test", "-e", "/var/lib/bpfleet/ghost", check=False).returncode == 1
    assert lab.exec("h1", "test", "-e", "/sys/fs/bpf/bpfleet/ghost", check=False).returncode == 1


def test_a_second_policy_cannot_take_an_interface_of_the_first(prepared):
    lab = prepared
    rival = {"name": "rival", "interfaces": ["eth0"], "filter": {"deny": ["192.0.2.0/24"]}}
    before = xdp_prog_id(lab, "h1")
    outcome = lab.playbook([policy_task(rival)], hosts="h1", expect_failure=True)
    assert "interface eth0 is already used by policy 'lab-edge' on this host" in result_of(outcome, "h1")["msg"]
    assert xdp_prog_id(lab, "h1") == before
    assert lab.exec("h1", "test", "-e", "/var/lib/bpfleet/rival", check=False).returncode == 1


def test_lockout_guard_refuses_a_policy_that_cuts_the_controller_off(prepared):
    lab = prepared
    controller = "203.0.113.1"  # the lab switch address Ansible's SSH comes from
    before = xdp_prog_id(lab, "h1")
    for check in (True, False):
        outcome = lab.playbook([policy_task(with_extra_deny(controller + "/32"))], hosts="h1", check=check,
                               expect_failure=True)
        message = result_of(outcome, "h1")["msg"]
        assert message.startswith("lockout guard: this policy would drop the controller's SSH connection from "
                                  "203.0.113.1 (it matches filter.deny 203.0.113.1/32)"), message
    assert xdp_prog_id(lab, "h1") == before
    assert lab.udp_delivered("h3", lab.hosts["h3"]["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 10
    applied = result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h1"), "h1")
    assert applied["lockout"] == {"controller": controller, "dropped": False,
                                  "reason": "no list matches it and filter.default is allow"}


def test_check_mode_reports_a_list_edit_without_applying_it(prepared):
    lab = prepared
    h3_ip = lab.hosts["h3"]["lab_ipv4"]
    before = xdp_prog_id(lab, "h1")
    outcome = lab.playbook([policy_task(with_extra_deny(h3_ip + "/32"))], hosts="h1", check=True, extra=["--diff"])
    result = result_of(outcome, "h1")
    assert result["changed"] is True
    assert result["compiled"] is False
    assert result["map_changes"] == [{"map": "deny_v4", "added": 1, "removed": 0,
                                      "added_sample": [h3_ip + "/32"], "removed_sample": []}]
    assert xdp_prog_id(lab, "h1") == before
    assert lab.udp_delivered("h3", h3_ip, "h1", lab.hosts["h1"]["lab_ipv4"]) == 10, "check mode changed the host"


def test_list_edit_updates_maps_without_compiling(prepared):
    lab = prepared
    h3_ip = lab.hosts["h3"]["lab_ipv4"]
    before = xdp_prog_id(lab, "h1")
    dropped_before = facts_of(lab, "h1")["policies"]["lab-edge"]["counters"]["rules"]["deny"]["packets"]
    result = result_of(lab.playbook([policy_task(with_extra_deny(h3_ip + "/32"))], hosts="h1"), "h1")
    assert result["changed"] is True and result["compiled"] is False
    assert xdp_prog_id(lab, "h1") == before, "a list edit must not replace the program"
    assert lab.udp_delivered("h3", h3_ip, "h1", lab.hosts["h1"]["lab_ipv4"]) == 0
    dropped_after = facts_of(lab, "h1")["policies"]["lab-edge"]["counters"]["rules"]["deny"]["packets"]
    assert dropped_after >= dropped_before + 10, "counters survive list edits and count the new drops"
    again = result_of(lab.playbook([policy_task(with_extra_deny(h3_ip + "/32"))], hosts="h1"), "h1")
    assert again["changed"] is False
    # Back to the base policy: the entry is removed by delta.
    back = result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h1"), "h1")
    assert back["map_changes"][0]["removed"] == 1
    assert lab.udp_delivered("h3", h3_ip, "h1", lab.hosts["h1"]["lab_ipv4"]) == 10


BROKEN_APPLY = textwrap.dedent("""
    import json, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.bpfleet.core.plugins.module_utils import _apply, _bcc_backend
    from ansible_collections.bpfleet.core.plugins.module_utils._runner import CommandRunner

    class Module:
        check_mode = False
        def run_command(self, args):
            done = subprocess.run(args, capture_output=True, text=True)
            return done.returncode, done.stdout, done.stderr

    rendered = json.load(open(sys.argv[2]))
    host = _apply.PolicyHost(CommandRunner(Module()), rendered)
    try:
        host.apply(host.plan(), _bcc_backend.compile_and_pin)
    except _bcc_backend.CompileError as exc:
        print(json.dumps({"stage": exc.stage, "message": str(exc), "log": exc.log}))
    else:
        print(json.dumps({"stage": None}))
""")


def test_compile_error_keeps_the_previous_program(prepared, tmp_path):
    """A program the compiler rejects must leave the running one attached and say why."""
    lab = prepared
    sys.path.insert(0, str(COLLECTIONS))
    from ansible_collections.bpfleet.core.plugins.module_utils import _policy
    from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

    model, _warnings = _policy.validate(copy.deepcopy(BASE_POLICY))
    rendered = _render.render(model)
    rendered["source"] += "\nint broken(struct xdp_md *ctx) { return undefined_symbol; }\n"
    rendered["source_digest"] = "sha256:" + "0" * 64
    rendered_path = tmp_path / "rendered.json"
    rendered_path.write_text(json.dumps(rendered))
    script = tmp_path / "broken_apply.py"
    script.write_text(BROKEN_APPLY)
    before = xdp_prog_id(lab, "h1")
    run = lab.exec("h1", "/usr/bin/python3", str(script), str(COLLECTIONS), str(rendered_path))
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["stage"] == "compile"
    assert "undefined_symbol" in report["log"]
    assert xdp_prog_id(lab, "h1") == before
    assert lab.exec("h1", "sh", "-c", "ls /sys/fs/bpf/bpfleet/lab-edge | grep -c _next", check=False).stdout.strip() \
        == "0", "staged pins of the failed compile are cleaned up"
    assert lab.udp_delivered("h3", lab.hosts["h3"]["lab_ipv4_alt"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 0
    assert result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h1"), "h1")["changed"] is False


def test_drift_is_reported_and_repaired(prepared):
    lab = prepared
    lab.exec("h1", "ip", "link", "set", "dev", "eth0", "xdp", "off")
    facts = facts_of(lab, "h1")["policies"]["lab-edge"]
    assert facts["healthy"] is False
    assert "eth0: xdp program is not attached" in facts["drift"]
    assert lab.udp_delivered("h3", lab.hosts["h3"]["lab_ipv4_alt"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 10
    repair = result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h1"), "h1")
    assert repair["changed"] is True and repair["compiled"] is False
    assert facts_of(lab, "h1")["policies"]["lab-edge"]["healthy"] is True
    assert lab.udp_delivered("h3", lab.hosts["h3"]["lab_ipv4_alt"], "h1", lab.hosts["h1"]["lab_ipv4"]) == 0


FOREIGN_XDP = textwrap.dedent("""
    from bcc import BPF
    b = BPF(text="int foreign_xdp(struct xdp_md *ctx) { return XDP_PASS; }")
    b.attach_xdp("eth0", b.load_func("foreign_xdp", BPF.XDP), 2)  # 2 = XDP_FLAGS_SKB_MODE
""")


def test_foreign_xdp_program_is_refused_unless_forced(prepared, tmp_path):
    lab = prepared
    absent = result_of(lab.playbook([{"bpfleet.core.policy": {"name": "lab-edge", "state": "absent"},
                                      "register": "out"}], hosts="h2"), "h2")
    assert absent["changed"] is True
    assert xdp_prog_id(lab, "h2") is None
    # On a host without the policy, check mode says a compile and attach would happen and does neither.
    planned = result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h2", check=True), "h2")
    assert planned["changed"] is True and planned["compiled"] is True
    assert "compile and load: policy not applied on this host yet" in planned["plan"]
    assert "attach XDP on eth0: new program version" in planned["plan"]
    assert xdp_prog_id(lab, "h2") is None
    assert lab.exec("h2", "test", "-e", "/var/lib/bpfleet/lab-edge", check=False).returncode == 1
    script = tmp_path / "foreign.py"
    script.write_text(FOREIGN_XDP)
    lab.exec("h2", "/usr/bin/python3", str(script))
    foreign_id = xdp_prog_id(lab, "h2")
    assert foreign_id is not None
    refused = result_of(lab.playbook([policy_task(BASE_POLICY)], hosts="h2", expect_failure=True), "h2")
    assert "foreign XDP program (id %d, name 'foreign_xdp'" % foreign_id in refused["msg"]
    assert xdp_prog_id(lab, "h2") == foreign_id
    forced = result_of(lab.playbook([policy_task(BASE_POLICY, force=True)], hosts="h2"), "h2")
    assert forced["changed"] is True
    assert xdp_prog_id(lab, "h2") not in (None, foreign_id)
    assert facts_of(lab, "h2")["policies"]["lab-edge"]["healthy"] is True


# Ports no other step of this file sends to: records with them can only come from the
# packets sent while the agent was stopped.
STOPPED_DENIED_PORT = 47311
STOPPED_ALLOWED_PORT = 47312
HEADERS_LOG = "/var/log/bpfleet/headers.jsonl"


def records_to(lab, host: str, src: str, dst_port: int) -> int:
    """Records in the host's header log from src to dst_port."""
    text = lab.exec(host, "sh", "-c", f"cat {HEADERS_LOG} 2>/dev/null || true").stdout
    count = 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("src_ip") == src and record.get("dst_port") == dst_port:
            count += 1
    return count


def send_udp(lab, sender: str, src: str, dst: str, port: int, count: int = 10) -> None:
    lab.exec(sender, "/usr/bin/python3", str(REPO / "tests" / "fleet" / "probe.py"), "send", "--proto", "udp",
             "--src", src, "--dst", dst, "--port", str(port), "--count", str(count), "--interval", "0.01")


def test_filtering_goes_on_while_the_agent_is_stopped(prepared):
    lab = prepared
    h1, h3 = lab.hosts["h1"]["lab_ipv4"], lab.hosts["h3"]
    lab.playbook([{"ansible.builtin.command": f"{AGENT} stop"}], hosts="h1")
    facts = facts_of(lab, "h1")
    assert facts["agent"]["running"] is False
    dropped = facts["policies"]["lab-edge"]["counters"]["dropped"]
    assert lab.udp_delivered("h3", h3["lab_ipv4_alt"], "h1", h1) == 0
    assert lab.udp_delivered("h3", h3["lab_ipv4"], "h1", h1) == 10
    # Fresh packets on fresh ports, denied and allowed, while nobody drains the ring buffer.
    assert records_to(lab, "h1", h3["lab_ipv4_alt"], STOPPED_DENIED_PORT) == 0
    assert records_to(lab, "h1", h3["lab_ipv4"], STOPPED_ALLOWED_PORT) == 0
    send_udp(lab, "h3", h3["lab_ipv4_alt"], h1, STOPPED_DENIED_PORT)
    send_udp(lab, "h3", h3["lab_ipv4"], h1, STOPPED_ALLOWED_PORT)
    counters = facts_of(lab, "h1")["policies"]["lab-edge"]["counters"]
    assert counters["dropped"] >= dropped + 20
    # Nothing writes them while the agent is stopped.
    assert records_to(lab, "h1", h3["lab_ipv4_alt"], STOPPED_DENIED_PORT) == 0
    # Records wait in the pinned ring buffer; the role starts the agent again and it drains them.
    lab.playbook([{"ansible.builtin.include_role": {"name": "bpfleet.core.host", "tasks_from": "agent"}}],
                 hosts="h1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        denied = records_to(lab, "h1", h3["lab_ipv4_alt"], STOPPED_DENIED_PORT)
        allowed = records_to(lab, "h1", h3["lab_ipv4"], STOPPED_ALLOWED_PORT)
        if denied >= 10 and allowed >= 10:
            break
        time.sleep(0.5)
    # Every record of the stopped period, each once.
    assert (denied, allowed) == (10, 10), "records from the stopped period: %d denied, %d allowed of 10 each" % (
        denied, allowed)
    assert facts_of(lab, "h1")["agent"]["running"] is True


def test_absent_removes_everything_it_made(prepared):
    lab = prepared
    removed = result_of(lab.playbook([{"bpfleet.core.policy": {"name": "lab-edge", "state": "absent"},
                                       "register": "out"}], hosts="h1"), "h1")
    assert removed["changed"] is True
    assert xdp_prog_id(lab, "h1") is None
    qdiscs = json.loads(lab.exec("h1", "tc", "-j", "qdisc", "show", "dev", "eth0").stdout)
    assert "clsact" not in [q["kind"] for q in qdiscs]
    assert lab.exec("h1", "test", "-e", "/sys/fs/bpf/bpfleet/lab-edge", check=False).returncode == 1
    assert facts_of(lab, "h1")["policy_names"] == []
    again = result_of(lab.playbook([{"bpfleet.core.policy": {"name": "lab-edge", "state": "absent"},
                                     "register": "out"}], hosts="h1"), "h1")
    assert again["changed"] is False


def test_all_interfaces_resolves_on_the_host(prepared):
    lab = prepared
    policy = dict(copy.deepcopy(BASE_POLICY), interfaces="all")
    applied = result_of(lab.playbook([policy_task(policy)], hosts="h1"), "h1")
    assert applied["changed"] is True
    assert applied["attachments"] == {"eth0": "native"}
    facts = facts_of(lab, "h1")["policies"]["lab-edge"]
    assert facts["policy"]["interfaces"] == ["eth0"] and facts["healthy"] is True
    assert result_of(lab.playbook([policy_task(policy)], hosts="h1"), "h1")["changed"] is False
    lab.playbook([{"bpfleet.core.policy": {"name": "lab-edge", "state": "absent"}}], hosts="h1")
    assert xdp_prog_id(lab, "h1") is None
