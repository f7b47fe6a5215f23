"""Fleet operations: rollout time vs host count, no-change re-run, one address added to a 100k list.

A lab fleet of 20 hosts (smoke: 1). The policy is the lab's edge policy (XDP filter on eth0,
every field logged both ways to the agent) with a deny list of 100,000 prefixes kept in its
own file. The bpfleet.core.host role (BCC, headers, bpffs, the agent) runs first on every
host, timed on its own; each operation after it is one `ansible-playbook` run over SSH
(forks 20) timed as a whole: the policy task on 1, 3, 10 and 20 hosts (before each step the
policy is removed from the previous step's hosts, so each step is a first rollout), then on
all hosts a no-change re-run, one address added to the list file, one address added with
bpfleet.core.blocklist (when the module exists), and the role + policy playbook again.
Compiles: hosts whose policy task reported `compiled: true`.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from _common import REPO, TAG, Fleet, deny_list, log

FULL_COUNTS = [1, 3, 10, 20]
SMOKE_COUNTS = [1]
LIST_SIZE, SMOKE_LIST_SIZE = 100000, 1000
EXTRA_ADDRESS = "198.18.0.1/32"   # RFC 2544 benchmarking range: in no generated list
EXTRA_ADDRESS_2 = "198.18.0.2/32"
# The stated bound of "block one address across the fleet in one short task" (the integration
# test in tests/integration/test_blocklist.py checks what it does; this measures how short):
# ansible-playbook with bpfleet.core.blocklist adding one address, per host count. Measured
# 15.0 s on 20 hosts (docs/benchmarks.md); twice that on a shared 2-core machine is the bound.
BLOCKLIST_BOUND_S = {1: 10.0, 3: 12.0, 10: 20.0, 20: 30.0}


def write_policy(workdir: Path, prefixes: list[str]) -> Path:
    (workdir / "deny.txt").write_text("\n".join(prefixes) + "\n")
    policy = {"name": "bench-fleet", "interfaces": ["eth0"], "xdp_mode": "auto",
              "filter": {"default": "allow", "deny": ["198.51.100.0/24", {"file": "deny.txt"}]},
              "log": {"fields": ["action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip", "ttl",
                                 "len", "proto", "src_port", "dst_port", "tcp_flags"],
                      "directions": ["ingress", "egress"], "sink": {"file": "/var/log/bpfleet/headers.jsonl"}}}
    path = workdir / "bench-fleet.yml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def rollout_play(policy: Path, role: bool = False) -> list:
    tasks = []
    if role:
        tasks.append({"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}})
    tasks.append({"name": "policy", "bpfleet.core.policy": {"src": str(policy)}, "register": "bench_policy"})
    return [{"name": "rollout", "hosts": "all", "tasks": tasks}]


def step(fleet: Fleet, operation: str, hosts: list[str], play: list) -> dict:
    outcome = fleet.playbook(play, limit=",".join(hosts))
    # The last task of the play is the one measured (policy or blocklist); the role comes first.
    policy_results = [results[-1] for results in outcome["results"].values() if results and results[-1]]
    row = {"operation": operation, "hosts": len(hosts), "seconds": outcome["seconds"],
           "compiles": sum(1 for r in policy_results if r.get("compiled")),
           "changed": sum(1 for r in policy_results if r.get("changed"))}
    log(f"  {operation:45} {len(hosts):>3} hosts {row['seconds']:7.1f} s  compiles {row['compiles']}  "
        f"changed {row['changed']}")
    return row


def run_all(workdir: Path, smoke: bool, deadline: float) -> dict:
    counts = SMOKE_COUNTS if smoke else FULL_COUNTS
    size = SMOKE_LIST_SIZE if smoke else LIST_SIZE
    fleet = Fleet(f"{TAG}bfleet", max(counts), workdir / "fleet20")
    rows = []
    try:
        log(f"  fleet of {fleet.count} hosts up in {fleet.up_seconds:.1f} s")
        prefixes = deny_list(size, "198.51.100.66")
        policy = write_policy(fleet.workdir, prefixes)
        prepared = fleet.playbook([{"name": "prepare", "hosts": "all", "tasks": [
            {"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}]}])
        rows.append({"operation": "host role alone, first run", "hosts": fleet.count,
                     "seconds": prepared["seconds"], "compiles": 0, "changed": "-"})
        log(f"  host role on {fleet.count} hosts: {prepared['seconds']:.1f} s")
        previous: list[str] = []
        remove = [{"name": "off", "hosts": "all", "tasks": [
            {"name": "policy absent", "bpfleet.core.policy": {"name": "bench-fleet", "state": "absent"}}]}]
        for count in counts:
            if time.monotonic() > deadline:
                log(f"  skip rollout to {count}: out of time budget")
                rows.append({"operation": "rollout (skipped: time budget)", "hosts": count, "seconds": None,
                             "compiles": "-", "changed": "-"})
                continue
            if previous:
                fleet.playbook(remove, limit=",".join(previous))
            hosts = fleet.hosts[:count]
            rows.append(step(fleet, f"rollout, {len(prefixes):,}-prefix deny list (policy task)", hosts,
                             rollout_play(policy)))
            previous = hosts
        everyone = previous
        rows.append(step(fleet, "re-run, no change (policy task)", everyone, rollout_play(policy)))
        policy = write_policy(fleet.workdir, prefixes + [EXTRA_ADDRESS])
        rows.append(step(fleet, "add one address (policy list edit, policy task)", everyone,
                         rollout_play(policy)))
        if (REPO / "plugins" / "modules" / "blocklist.py").exists():
            block = {"policy": "bench-fleet", "entries": [EXTRA_ADDRESS_2]}
            row = step(fleet, "add one address (bpfleet.core.blocklist)", everyone, [
                {"name": "blocklist", "hosts": "all", "tasks": [
                    {"name": "block one", "bpfleet.core.blocklist": block}]}])
            row["bound_s"] = BLOCKLIST_BOUND_S.get(len(everyone))
            if row["bound_s"] is not None:
                within = row["seconds"] <= row["bound_s"]
                log(f"  blocklist one address on {len(everyone)} hosts: {row['seconds']:.1f} s, bound "
                    f"{row['bound_s']:.0f} s: {'within' if within else 'OVER THE BOUND'}")
            rows.append(row)
        if not smoke and time.monotonic() < deadline:
            rows.append(step(fleet, "re-run, no change (host role + policy task)", everyone,
                             rollout_play(policy, role=True)))
    finally:
        fleet.down()
    return {"rows": rows, "list_size": len(prefixes) + 1,
            "method": f"ansible-playbook over SSH, forks 20, lab fleet of {fleet.count} hosts on this machine; "
                      f"policy: XDP filter with a {len(prefixes) + 1:,}-prefix deny list (a list file) and "
                      "full L3/L4 logging both ways."}
