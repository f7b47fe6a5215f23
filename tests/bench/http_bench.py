"""HTTP overhead: nginx in lab host h2 under wrk from lab host h1, without and with log.http.

nginx (Debian's) runs in h2's network namespace with its own config, pid, log and temp paths
in the bench's work directory (never the system service): one worker pinned to CPU 1,
`return 200` for every request, no access log. wrk (one thread, 50 connections, pinned to CPU
0) runs in h1 against 192.0.2.2:80 over the bench0 veth pair. Configurations:
  no bpfleet        nothing attached
  filter only       the XDP program attached (native), nothing logged: what XDP on a veth costs
  L3/L4 log         a policy logging every packet both ways (default fields), no log.http
  L3/L4 + log.http  the same plus HTTP request capture on port 80 (default redaction)
  requests only     log.http with requests_only, ingress: one record per request, nothing else
  agent stopped     L3/L4 + log.http with the agent stopped: the kernel's part alone (the ring fills
                    within a second; later records are counted as lost, every request is still
                    parsed and scanned)
Policies attach XDP in generic mode (XDP_MODE below says why).
The agent on h2 writes the records meanwhile; its CPU is part of the cost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import agent
import filters
import yaml
from _common import BenchError, Fleet, log, process_cpu_seconds, run, summary

POLICY_NAME = "bench-http"
# Generic: native XDP on a veth moves its receive path to a NAPI poll that costs nginx about
# half its requests/s here with nothing logged (57,000 against 105,000), a veth effect that a
# NIC's native XDP does not have; generic keeps the veth's own path. BPFLEET_BENCH_HTTP_XDP_MODE
# picks another mode.
XDP_MODE = os.environ.get("BPFLEET_BENCH_HTTP_XDP_MODE", "generic")
CONF = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen {address}:80 reuseport;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(fleet: Fleet, seconds: float) -> dict:
    out = run(["taskset", "-c", "0", "ip", "netns", "exec", fleet.netns("h1"), "wrk", "-t1", "-c50",
               f"-d{int(seconds)}s", "--latency", f"http://{filters.RECEIVER_IP}/"], timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else None,
            "errors": errors.group(0) if errors else None}


def cpu_times() -> dict:
    """Machine-wide CPU seconds by kind, from the first line of /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:8]]
    ticks = os.sysconf("SC_CLK_TCK")
    kinds = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")
    return dict((kind, value / ticks) for kind, value in zip(kinds, values, strict=True))


def agent_pid(fleet: Fleet):
    """The agent worker's pid on h2 (its status file), or None when it wrote none yet."""
    try:
        pid = json.loads(fleet.exec("h2", "cat", "/run/bpfleet/agent-status.json").stdout).get("pid")
    except (BenchError, ValueError):
        return None
    return pid if pid and os.path.exists(f"/proc/{pid}/stat") else None


def program_costs(fleet: Fleet, seconds: float) -> dict:
    """Diagnosis (BPFLEET_BENCH_PROG_STATS=1): ns per run of each attached program over one
    more wrk run, with kernel.bpf_stats_enabled on."""
    prog_ids = agent.attached_programs(fleet)
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    saved = sysctl.read_text().strip()
    sysctl.write_text("1")
    try:
        before = agent.run_stats(prog_ids)
        wrk(fleet, seconds)
        after = agent.run_stats(prog_ids)
    finally:
        sysctl.write_text(saved)
    costs = {}
    for hook, (run_ns, runs) in after.items():
        delta = runs - before[hook][1]
        costs[hook] = {"runs": delta, "ns": (run_ns - before[hook][0]) / delta if delta else None}
    log(f"    programs: {costs}")
    return costs


def http_records(fleet: Fleet) -> int:
    """HTTP request records in the last MiB of the bench log on h2 (proof that capture was on)."""
    path = Path(f"/tmp/bpfleet-lab/{fleet.name}/h2/log/bpfleet/bench-http.jsonl")
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        return len(re.findall(rb'"method": ?"GET"', handle.read()))


def apply(fleet: Fleet, workdir, log_section) -> None:
    if log_section is None:
        fleet.playbook([{"name": "http off", "hosts": "h2", "tasks": [
            {"name": "remove", "bpfleet.core.policy": {"name": POLICY_NAME, "state": "absent"}}]}])
        return
    policy = {"name": POLICY_NAME, "interfaces": [filters.IFACE], "xdp_mode": XDP_MODE,
              "log": dict(log_section, sink={"file": "/var/log/bpfleet/bench-http.jsonl"})}
    path = workdir / "bench-http.yml"
    path.write_text(yaml.safe_dump(policy))
    fleet.playbook([{"name": "http policy", "hosts": "h2", "tasks": [
        {"name": "apply", "bpfleet.core.policy": {"src": str(path)}}]}])


def run_all(fleet: Fleet, workdir, smoke: bool) -> dict:
    filters.ensure_link(fleet)
    ndir = workdir / "nginx"
    for sub in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (ndir / sub).mkdir(parents=True, exist_ok=True)
    conf = ndir / "nginx.conf"
    conf.write_text(CONF.format(dir=ndir, address=filters.RECEIVER_IP))
    nginx = subprocess.Popen(["taskset", "-c", "1", "ip", "netns", "exec", fleet.netns("h2"), "nginx", "-c", conf,
                              "-p", ndir, "-e", ndir / "error.log", "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, repeats = (1.0, 1) if smoke else (3.0, 3)
    rows = []
    try:
        deadline = time.monotonic() + 10
        while True:
            if nginx.poll() is not None:
                raise BenchError(f"nginx exited: {nginx.stderr.read()[-2000:]}")
            probe = run(["ip", "netns", "exec", fleet.netns("h1"), "curl", "-s", "-m", "1",
                         f"http://{filters.RECEIVER_IP}/"], check=False)
            if probe.stdout.strip() == "ok":
                break
            if time.monotonic() > deadline:
                raise BenchError(f"nginx in h2 does not answer: {probe.stderr}")
            time.sleep(0.2)
        http_log = {"directions": ["ingress", "egress"], "http": {"ports": [80]}}
        # (name, log section or None for no policy, whether the agent runs)
        configs = (("no bpfleet", None, True),
                   ("XDP filter only, no logging", {"enabled": False}, True),
                   ("L3/L4 log (every packet, both ways)", {"directions": ["ingress", "egress"]}, True),
                   ("L3/L4 log + log.http (port 80)", http_log, True),
                   ("log.http requests only (port 80, ingress)", {"directions": ["ingress"],
                                                                  "http": {"ports": [80], "requests_only": True}},
                    True),
                   ("L3/L4 log + log.http, agent stopped (kernel side alone)", http_log, False))
        for name, section, agent_runs in configs:
            apply(fleet, workdir, section)
            if not agent_runs:
                fleet.exec("h2", "/usr/lib/bpfleet/agent/bpfleet-agent", "stop")
            wrk(fleet, 1)  # warm-up: connections, caches, the agent's first records
            pid = agent_pid(fleet)
            agent_before = process_cpu_seconds(pid) if pid else None
            cpu_before, started = cpu_times(), time.monotonic()
            samples = [wrk(fleet, seconds) for _repeat in range(repeats)]
            elapsed = time.monotonic() - started
            cpu_after = cpu_times()
            row = {"config": name, "samples": samples, "rps": summary([s["rps"] for s in samples]),
                   "p99_ms": summary([s["p99_ms"] for s in samples if s["p99_ms"] is not None]),
                   # Where the two CPUs went while wrk ran (wrk, nginx, the agent, softirq).
                   "cpu_cores": dict((kind, (cpu_after[kind] - cpu_before[kind]) / elapsed) for kind in cpu_after)}
            if pid and agent_pid(fleet) == pid:
                row["agent_cpu_cores"] = (process_cpu_seconds(pid) - agent_before) / elapsed
            if section is not None and os.environ.get("BPFLEET_BENCH_PROG_STATS"):
                row["prog_ns_per_run"] = program_costs(fleet, seconds)
            if section and section.get("http") and agent_runs:
                row["http_records_seen"] = http_records(fleet)
                if not row["http_records_seen"]:
                    raise BenchError("log.http was on but the log holds no HTTP request record")
            rows.append(row)
            log(f"  {name:40} {row['rps']['median']:>10,.0f} req/s  p99 {row['p99_ms'].get('median', 0):.2f} ms  "
                f"agent {100 * (row.get('agent_cpu_cores') or 0):.0f} % of a core, softirq "
                f"{100 * row['cpu_cores']['softirq']:.0f} %, idle {100 * row['cpu_cores']['idle']:.0f} %")
        apply(fleet, workdir, None)
        fleet.exec("h2", "/usr/lib/bpfleet/agent/bpfleet-agent", "start")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
    result = {"rows": rows, "method": f"wrk -t1 -c50 -d{seconds:g}s --latency, {repeats} runs per configuration "
                                      "after a warm-up; nginx 1 worker on CPU 1, wrk on CPU 0."}
    by_config = dict((row["config"], row["rps"]["median"]) for row in rows)
    names = [config[0] for config in configs]
    if names[2] in by_config and names[3] in by_config:
        result["http_overhead"] = 1 - by_config[names[3]] / by_config[names[2]]
        result["http_overhead_vs_none"] = 1 - by_config[names[3]] / by_config[names[0]]
    if names[4] in by_config:
        result["request_log_overhead_vs_none"] = 1 - by_config[names[4]] / by_config[names[0]]
        result["request_log_overhead_vs_filter"] = 1 - by_config[names[4]] / by_config[names[1]]
    return result
