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

Then the agent alone at higher rates with the agent's own measuring script,
tests/bench/agent_throughput.py: a tc program fed by BPF_PROG_TEST_RUN in 1 ms ticks fills a
real ring buffer at the offered rate (up to millions of records/s, more than any lab sender
reaches through tc) while the real agent drains it; its JSON report per rate is kept.
`--agent-bench CMD` (or BPFLEET_AGENT_BENCH) runs another such script instead, and keeps
the one JSON object it prints per run, so the harness can follow a rewritten agent.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import filters
import yaml
from _common import (
    COLLECTIONS,
    HERE,
    BenchError,
    Fleet,
    blast,
    blast_binary,
    flood_mode,
    log,
    process_cpu_seconds,
    run,
)

sys.path.insert(0, str(COLLECTIONS))
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf  # noqa: E402

POLICY_NAME = "bench-log"
SINK = "/var/log/bpfleet/bench-log.jsonl"
FULL_RATES = [25000, 50000, 100000, 200000, 400000, None]  # None: unpaced (XDP live frames)
SMOKE_RATES = [20000]
SCRIPT = HERE / "agent_throughput.py"
SCRIPT_RATES, SMOKE_SCRIPT_RATES = [250000, 500000, 1000000, 1500000, 2000000], [100000]


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


def settle(fleet: Fleet, target: int | None = None, timeout: float = 30.0) -> dict:
    """Agent status once it wrote `target` records (all the kernel queued), or once
    records_written stopped moving for three status updates in a row."""
    deadline = time.monotonic() + timeout
    last = agent_status(fleet)
    still = 0
    while time.monotonic() < deadline:
        if target is not None and last["written"] + last["lost_user"] >= target:
            return last
        time.sleep(1.0)
        now = agent_status(fleet)
        if now["written"] == last["written"] and now["updated"] > last["updated"]:
            still += 1
            if still >= (3 if target is not None else 1):
                return now
        else:
            still = 0
        last = now
    return last


def send(fleet: Fleet, rate: int | None, seconds: float) -> dict:
    argv = ["ip", "netns", "exec", fleet.netns("h1"), blast_binary(), "--iface", filters.IFACE,
            "--src", filters.SENDER_IP, "--dst", filters.RECEIVER_IP, "--dst-mac", filters.RECEIVER_MAC,
            "--duration", str(seconds), "--size", "64"]
    argv += ["--mode", "packet", "--rate", str(rate)] if rate else ["--mode", flood_mode()]
    return blast.parse_report(run(["taskset", "-c", "0", *argv], timeout=seconds + 60).stdout)


def attached_programs(fleet: Fleet) -> dict:
    """{"xdp": id, "tc_ingress": id, "tc_egress": id} of the programs attached to h2's bench link."""
    link = json.loads(fleet.exec("h2", "ip", "-j", "link", "show", "dev", filters.IFACE).stdout)[0]
    found = {"xdp": ((link.get("xdp") or {}).get("prog") or {}).get("id")}
    for direction in ("ingress", "egress"):
        for entry in json.loads(fleet.exec("h2", "tc", "-j", "filter", "show", "dev", filters.IFACE,
                                           direction).stdout):
            prog = ((entry.get("options") or {}).get("prog") or {}).get("id")
            if prog:
                found["tc_" + direction] = prog
    return found


def run_stats(prog_ids: dict) -> dict:
    """{hook: (run_time_ns, run_cnt)}; counted while kernel.bpf_stats_enabled is 1."""
    out = {}
    for hook, prog_id in prog_ids.items():
        if not prog_id:
            continue
        fd = bpf.prog_get_fd_by_id(prog_id)
        try:
            info = bpf.prog_info(fd)
        finally:
            bpf.close_fd(fd)
        out[hook] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out


def agent_alone(smoke: bool, external: str = "") -> list:
    """The agent's own measuring script at each rate; its JSON report per run."""
    reports = []
    for rate in (SMOKE_SCRIPT_RATES if smoke else SCRIPT_RATES):
        if external:
            argv = shlex.split(external.replace("{rate}", str(rate)))
        else:
            argv = ["/usr/bin/python3", SCRIPT, "--rate", str(rate), "--seconds", "1" if smoke else "4", "--json"]
        result = run(argv, timeout=900, check=False)
        lines = result.stdout.strip().splitlines()
        try:
            report = json.loads(lines[-1])
        except (IndexError, ValueError):
            report = {"error": (result.stderr or result.stdout)[-1000:]}
        report.setdefault("rate_offered", rate)
        reports.append(report)
        log(f"  agent alone, offered {rate:>10,}/s: written {report.get('records_per_s_written', 0):>10,}/s, "
            f"lost kernel {report.get('lost_kernel')}, lost agent {report.get('lost_agent')}, "
            f"CPU {report.get('agent_cpu_percent_of_one_core')} % of a core")
    return reports


def run_all(fleet: Fleet, workdir, smoke: bool, external: str = "") -> dict:
    alone = agent_alone(smoke, external) if (external or SCRIPT.exists()) else []
    zero_alone = [r["rate_offered"] for r in alone
                  if r.get("emitted") and r.get("lost_kernel") == 0 and r.get("lost_agent") == 0
                  and r.get("unaccounted") == 0]
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
    prog_ids = attached_programs(fleet)
    # The kernel times every program run while this is on (two clock reads per run, included
    # in the figures): the cost of the real path, verdict hand-over from XDP to tc included.
    stats_sysctl = "/proc/sys/kernel/bpf_stats_enabled"
    stats_before = Path(stats_sysctl).read_text().strip()
    Path(stats_sysctl).write_text("1")
    try:
        for rate in (SMOKE_RATES if smoke else FULL_RATES):
            steps.append(one_step(fleet, rate, seconds, prog_ids))
    finally:
        Path(stats_sysctl).write_text(stats_before)
    fleet.playbook([{"name": "bench log off", "hosts": "h2", "tasks": [
        {"name": "remove", "bpfleet.core.policy": {"name": POLICY_NAME, "state": "absent"}}]}])
    zero = [s["offered_rate"] for s in steps if s["lost"] == 0 and s["paced"]]
    return {"steps": steps, "zero_loss_rate": max(zero) if zero else None, "alone": alone,
            "alone_zero_loss_rate": max(zero_alone) if zero_alone else None,
            "external": external or None,
            "method": "Paced UDP from h1 into h2's bench0 (AF_PACKET, then unpaced XDP live frames); every "
                      f"packet logged at tc ingress; {seconds:.0f} s per step; the agent of this checkout "
                      "as the host role installs it. ns per packet: the kernel's own run time of the attached "
                      "XDP and tc ingress programs over the step (kernel.bpf_stats_enabled, which adds two "
                      "clock reads per run)."}


def one_step(fleet: Fleet, rate, seconds: float, prog_ids: dict) -> dict:
    """One paced (or unpaced) sending step: records emitted, lost, written, agent CPU, and the
    programs' own ns per packet."""
    before_k, before_a = kernel_counters(fleet), settle(fleet)
    before_run = run_stats(prog_ids)
    cpu_before = process_cpu_seconds(before_a["pid"])
    report = send(fleet, rate, seconds)
    time.sleep(0.2)
    after_k = kernel_counters(fleet)
    queued = after_k["records_emitted"] - before_k["records_emitted"]
    after_a = settle(fleet, target=before_a["written"] + before_a["lost_user"] + queued)
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
    after_run = run_stats(prog_ids)
    for hook, (run_ns, runs) in after_run.items():
        delta_runs = runs - before_run.get(hook, (0, 0))[1]
        step[hook + "_ns_per_packet"] = ((run_ns - before_run[hook][0]) / delta_runs) if delta_runs else None
    log(f"  offered {step['offered_rate']:>10,.0f}/s: emitted {emitted:,} lost in kernel {lost_kernel:,} "
        f"written {written:,} ({100 * step['loss_ratio']:.2f} % lost), agent CPU {cpu:.2f} s, "
        f"XDP {step.get('xdp_ns_per_packet') or 0:.0f} ns + tc {step.get('tc_ingress_ns_per_packet') or 0:.0f} ns"
        " per packet")
    return step
