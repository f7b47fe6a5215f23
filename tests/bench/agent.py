"""Logging pipeline: records/s the agent writes with zero loss, and the loss above that.

The real pipeline end to end: a bpfleet policy on h2's bench0 logs every ingress packet (tc
ingress, default fields) into its ring buffer; the agent the host role installed and started
on h2 drains it into JSON lines. h1 sends paced UDP (bpfleet-blast, AF_PACKET, --rate) for a
few seconds per step, then, when the agent has caught up, the step counts:
  emitted      records the kernel queued (stats slot records_emitted)
  lost kernel  records the kernel could not queue, ring full (records_lost)
  written      records the agent wrote (its status file, records_written)
  lost         emitted + lost kernel - written
and the agent process's CPU time (utime + stime) over the step.

`--agent-bench CMD` (or BPFLEET_AGENT_BENCH) runs a measuring script of the agent's own
instead and keeps the one JSON object it prints, so the harness can follow a rewritten agent.
"""

from __future__ import annotations

import json
import shlex
import time

import filters
import yaml
from _common import COLLECTIONS, HERE, BenchError, Fleet, blast, blast_binary, log, process_cpu_seconds, run

POLICY_NAME = "bench-log"
SINK = "/var/log/bpfleet/bench-log.jsonl"
FULL_RATES = [25000, 50000, 100000, 200000, 400000, None]  # None: unpaced (XDP live frames)
SMOKE_RATES = [20000]


def kernel_counters(fleet: Fleet) -> dict:
    out = fleet.exec("h2", "/usr/bin/python3", HERE / "hoststats.py", COLLECTIONS, POLICY_NAME).stdout
    return json.loads(out)


def agent_status(fleet: Fleet) -> dict:
    text = fleet.exec("h2", "cat", "/run/bpfleet/agent-status.json").stdout
    status = json.loads(text)
    policy = (status.get("policies") or {}).get(POLICY_NAME) or {}
    return {"pid": status["pid"], "written": policy.get("records_written", 0),
            "lost_user": policy.get("records_lost_user", 0), "updated": status.get("updated_at_unix", 0),
            "error": policy.get("error")}


def settle(fleet: Fleet, timeout: float = 30.0) -> dict:
    """Agent status once records_written stopped moving (and a status written after that)."""
    deadline = time.monotonic() + timeout
    last = agent_status(fleet)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = agent_status(fleet)
        if now["written"] == last["written"] and now["updated"] > last["updated"]:
            return now
        last = now
    return last


def send(fleet: Fleet, rate: int | None, seconds: float) -> dict:
    argv = ["ip", "netns", "exec", fleet.netns("h1"), blast_binary(), "--iface", filters.IFACE,
            "--src", filters.SENDER_IP, "--dst", filters.RECEIVER_IP, "--dst-mac", filters.RECEIVER_MAC,
            "--duration", str(seconds), "--size", "64"]
    argv += ["--mode", "packet", "--rate", str(rate)] if rate else ["--mode", "xdp"]
    return blast.parse_report(run(["taskset", "-c", "0", *argv], timeout=seconds + 60).stdout)


def run_all(fleet: Fleet, workdir, smoke: bool, external: str = "") -> dict:
    if external:
        log(f"  external agent benchmark: {external}")
        result = run(shlex.split(external), timeout=900)
        return {"external": external, "report": json.loads(result.stdout.strip().splitlines()[-1]),
                "method": "Measured by the agent's own script (see its documentation)."}
    filters.ensure_link(fleet)
    policy = {"name": POLICY_NAME, "interfaces": [filters.IFACE], "xdp_mode": "native",
              "log": {"directions": ["ingress"], "sink": {"file": SINK}}}
    path = workdir / "bench-log.yml"
    path.write_text(yaml.safe_dump(policy))
    fleet.playbook([{"name": "bench log", "hosts": "h2", "tasks": [
        {"name": "apply", "bpfleet.core.policy": {"src": str(path)}}]}])
    # The agent finds a new policy on its next rescan.
    deadline = time.monotonic() + 20
    while agent_status(fleet)["updated"] == 0 or POLICY_NAME not in json.dumps(
            fleet.exec("h2", "cat", "/run/bpfleet/agent-status.json").stdout):
        if time.monotonic() > deadline:
            raise BenchError("the agent on h2 did not pick up the bench-log policy within 20 s")
        time.sleep(0.5)
    seconds = 1.0 if smoke else 3.0
    steps = []
    for rate in (SMOKE_RATES if smoke else FULL_RATES):
        before_k, before_a = kernel_counters(fleet), settle(fleet)
        cpu_before = process_cpu_seconds(before_a["pid"])
        report = send(fleet, rate, seconds)
        after_a = settle(fleet)
        after_k = kernel_counters(fleet)
        if after_a["pid"] != before_a["pid"]:
            raise BenchError(f"the agent restarted during the step at {rate}/s (pid {before_a['pid']} -> "
                             f"{after_a['pid']})")
        cpu = process_cpu_seconds(after_a["pid"]) - cpu_before
        emitted = after_k["records_emitted"] - before_k["records_emitted"]
        lost_kernel = after_k["records_lost"] - before_k["records_lost"]
        written = after_a["written"] - before_a["written"]
        offered = emitted + lost_kernel
        step = {"offered_rate": rate or report["pps"], "paced": bool(rate), "sent": report["sent"],
                "seconds": report["seconds"], "emitted": emitted, "lost_kernel": lost_kernel, "written": written,
                "lost": offered - written, "loss_ratio": (offered - written) / offered if offered else 0.0,
                "written_per_s": written / report["seconds"], "agent_cpu_s": cpu,
                "agent_cpu_cores": cpu / report["seconds"],
                "us_cpu_per_record": 1e6 * cpu / written if written else None}
        steps.append(step)
        log(f"  offered {step['offered_rate']:>10,.0f}/s: emitted {emitted:,} lost in kernel {lost_kernel:,} "
            f"written {written:,} ({100 * step['loss_ratio']:.2f} % lost), agent CPU {cpu:.2f} s")
    fleet.playbook([{"name": "bench log off", "hosts": "h2", "tasks": [
        {"name": "remove", "bpfleet.core.policy": {"name": POLICY_NAME, "state": "absent"}}]}])
    zero = [s["offered_rate"] for s in steps if s["lost"] == 0 and s["paced"]]
    return {"steps": steps, "zero_loss_rate": max(zero) if zero else None,
            "method": "Paced UDP from h1 into h2's bench0 (AF_PACKET, then unpaced XDP live frames); every "
                      f"packet logged at tc ingress; {seconds:.0f} s per step; main's agent (Python, stdlib) "
                      "as the host role installs it."}
