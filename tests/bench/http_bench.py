"""HTTP overhead: nginx in lab host h2 under wrk from lab host h1, without and with log.http.

nginx (Debian's) runs in h2's network namespace with its own config, pid, log and temp paths
in the bench's work directory (never the system service): one worker pinned to CPU 1,
`return 200` for every request, no access log. wrk (one thread, 50 connections, pinned to CPU
0) runs in h1 against 192.0.2.2:80 over the bench0 veth pair. Configurations:
  no bpfleet        nothing attached
  L3/L4 log         a policy logging every packet both ways (default fields), no log.http
  L3/L4 + log.http  the same plus HTTP request capture on port 80 (default redaction)
  requests only     log.http with requests_only, ingress: one record per request, nothing else
The agent on h2 writes the records meanwhile; its CPU is part of the cost.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import filters
import yaml
from _common import BenchError, Fleet, log, run, summary

POLICY_NAME = "bench-http"
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
    policy = {"name": POLICY_NAME, "interfaces": [filters.IFACE], "xdp_mode": "native",
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
        configs = (("no bpfleet", None),
                   ("L3/L4 log (every packet, both ways)", {"directions": ["ingress", "egress"]}),
                   ("L3/L4 log + log.http (port 80)", {"directions": ["ingress", "egress"],
                                                       "http": {"ports": [80]}}),
                   ("log.http requests only (port 80, ingress)", {"directions": ["ingress"],
                                                                  "http": {"ports": [80], "requests_only": True}}))
        for name, section in configs:
            apply(fleet, workdir, section)
            wrk(fleet, 1)  # warm-up: connections, caches, the agent's first records
            samples = [wrk(fleet, seconds) for _repeat in range(repeats)]
            row = {"config": name, "samples": samples, "rps": summary([s["rps"] for s in samples]),
                   "p99_ms": summary([s["p99_ms"] for s in samples if s["p99_ms"] is not None])}
            if section and section.get("http"):
                row["http_records_seen"] = http_records(fleet)
                if not row["http_records_seen"]:
                    raise BenchError("log.http was on but the log holds no HTTP request record")
            rows.append(row)
            log(f"  {name:40} {row['rps']['median']:>10,.0f} req/s  p99 {row['p99_ms'].get('median', 0):.2f} ms")
        apply(fleet, workdir, None)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
    result = {"rows": rows, "method": f"wrk -t1 -c50 -d{seconds:g}s --latency, {repeats} runs per configuration "
                                      "after a warm-up; nginx 1 worker on CPU 1, wrk on CPU 0."}
    if len(rows) >= 3:
        result["http_overhead"] = 1 - rows[2]["rps"]["median"] / rows[1]["rps"]["median"]
        result["http_overhead_vs_none"] = 1 - rows[2]["rps"]["median"] / rows[0]["rps"]["median"]
    if len(rows) >= 4:
        result["request_log_overhead_vs_none"] = 1 - rows[3]["rps"]["median"] / rows[0]["rps"]["median"]
    return result
