"""bpfleet benchmarks: one command runs them all, prints figures and ratios, writes JSON and SVG.

    tests/bench/run.sh [--smoke] [--only filter,cost,agent,http,fleet] [--out DIR] [--docs]
  tests/bench/run.sh --from-results DIR/results.json [--docs]     (tables, chart, docs only)

Sections, in this order (each repeated; min and median reported):
  cost    ns/packet of every generated program variant with BPF_PROG_TEST_RUN
  agent   records/s the agent writes with zero loss, and the loss above that
  http    nginx under wrk between two lab hosts, without and with log.http
  fleet   rollout time vs host count, no-change re-run, one address added to a 100k list
  filter  throughput through a veth pair into a lab host, deny lists of 10 to 1,000,000
          prefixes, bpfleet vs no filter, nftables, ipset, iptables, xdp-filter

`--smoke` runs each benchmark briefly (a minute or two) to prove it still works; its figures
mean nothing. Results: DIR/results.json, DIR/throughput.svg, DIR/tables.md (DIR defaults to
tests/bench/results/smoke or tests/bench/results/full). `--docs` also rewrites the generated
part of docs/benchmarks.md and copies the chart to docs/img/. Needs root (namespaces, bpf).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from _common import REPO, TAG, BenchError, Fleet, log, machine  # noqa: E402

# Filter last: its 1,000,000-entry lists are the part that may not fit the time budget.
SECTIONS = ("cost", "agent", "http", "fleet", "filter")
BUDGET_S = {"smoke": 240, "full": 19 * 60}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests/bench/run.sh", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--smoke", action="store_true", help="short runs that prove each benchmark works")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--filters", default="", help="comma-separated filters for the filter section")
    parser.add_argument("--out", help="results directory")
    parser.add_argument("--budget", type=float, help="time budget in minutes (default: 19, smoke 4); steps that "
                        "would start after it are skipped and listed")
    parser.add_argument("--docs", action="store_true", help="rewrite the generated part of docs/benchmarks.md")
    parser.add_argument("--agent-bench", default=os.environ.get("BPFLEET_AGENT_BENCH", ""),
                        help="a script that measures the agent itself (prints one JSON object); "
                             "without it the agent section floods a lab host and counts")
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="run nothing: rewrite tables.md, the chart (and with --docs the docs) from a results.json")
    args = parser.parse_args(argv)
    if args.from_results:
        source = Path(args.from_results)
        results = json.loads(source.read_text())
        tables = report.tables(results)
        (source.parent / "tables.md").write_text(tables)
        svg = report.throughput_svg(results)
        if svg:
            (source.parent / "throughput.svg").write_text(svg)
        if args.docs:
            report.update_docs(source.parent, results, tables)
        print(tables)
        return 0
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, bpf(2))", file=sys.stderr)
        return 2
    # Stopped from outside (kill, or ^C of a background job, which ignores SIGINT): still take
    # the lab fleets down, through the finally clauses.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode = "smoke" if args.smoke else "full"
    out = Path(args.out) if args.out else REPO / "tests" / "bench" / "results" / mode
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + (args.budget * 60 if args.budget else BUDGET_S[mode])
    results = {"mode": mode, "machine_before": machine(), "sections": {}, "errors": {},
               "command": "tests/bench/run.sh " + " ".join(argv)}
    workdir = Path(tempfile.mkdtemp(prefix="bpfleet-bench-"))
    log(f"bench {mode}: load average {results['machine_before']['loadavg']} on "
        f"{results['machine_before']['nproc']} CPUs, kernel {results['machine_before']['kernel']}")
    fleet = None
    try:
        if set(sections) & {"filter", "agent", "http"}:
            fleet = Fleet(f"{TAG}bench", 2, workdir / "fleet2")
            log(f"lab fleet {fleet.name} up in {fleet.up_seconds:.1f} s; preparing hosts (role bpfleet.core.host)")
            prepared = fleet.playbook([{"name": "prepare", "hosts": "all", "tasks": [
                {"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}]}])
            results["prepare_seconds"] = prepared["seconds"]
        for section in sections:
            section_started = time.monotonic()
            log(f"== {section}")
            try:
                results["sections"][section] = run_section(section, fleet, workdir, args, deadline)
            except Exception as error:  # a broken section must not lose the others' figures
                results["errors"][section] = f"{type(error).__name__}: {error}"[-3000:]
                log(f"{section} failed: {error}")
                traceback.print_exc()
            log(f"== {section} took {time.monotonic() - section_started:.0f} s")
    finally:
        if fleet is not None:
            fleet.down()
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine_after"] = machine()
    results["wall_seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = report.tables(results)
    (out / "tables.md").write_text(tables)
    svg = report.throughput_svg(results)
    if svg:
        (out / "throughput.svg").write_text(svg)
    print()
    print(tables)
    log(f"results in {out} ({results['wall_seconds']:.0f} s)")
    if args.docs:
        report.update_docs(out, results, tables)
    return 1 if results["errors"] else 0


def run_section(section, fleet, workdir, args, deadline):
    smoke = args.smoke
    if section == "filter":
        import filters

        only = [f for f in args.filters.split(",") if f] or None
        return filters.run_all(fleet, workdir, smoke, repeats=1 if smoke else 3, seconds=0.5 if smoke else 1.2,
                               deadline=deadline - 30, only=only)
    if section == "cost":
        import cost

        return cost.run_all(smoke)
    if section == "agent":
        import agent

        return agent.run_all(fleet, workdir, smoke, args.agent_bench)
    if section == "http":
        import http_bench

        return http_bench.run_all(fleet, workdir, smoke)
    if section == "fleet":
        import fleet_ops

        # Leaves the filter section (after it) the time its lists up to 100,000 entries take.
        reserve = 7 * 60 if not smoke and "filter" in args.only.split(",") else 0
        return fleet_ops.run_all(workdir, smoke, deadline - reserve)
    raise BenchError(section)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
