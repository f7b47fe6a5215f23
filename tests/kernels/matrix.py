"""The kernel matrix: each Debian suite's stock kernel in a qemu guest, plus this machine's kernel.

    matrix.py [--suites bullseye,bookworm,trixie] [--no-own] [--out DIR]

Brings up a 2-host lab fleet (h1 sends traffic, h2 is the machine's own kernel), then for
each suite builds (or reuses) its image, boots it on the fleet's bridge and runs the
end-to-end check of tests/kernels/e2e.py on it. Writes DIR/results.json and DIR/matrix.md
(the table of docs/compatibility.md) and exits 1 when a kernel neither passed nor was
refused cleanly. Run as root from the repository's venv (`make kernel-matrix`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402
import guest as guest_mod  # noqa: E402
import images  # noqa: E402

REPO = HERE.parents[1]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
DEFAULT_OUT = REPO / ".tmp" / "kernel-matrix"
SENDER = "h1"
OWN = "h2"

# Features shown as table columns: the optional ones (with fallbacks) and the required ones
# that old kernels lack. Every probed feature is in results.json.
COLUMNS = [
    ("map_ringbuf", "ring buffer"),
    ("map_batch_ops", "batch ops"),
    ("xdp_adjust_meta_in_xdp", "xdp_adjust_meta"),
    ("ktime_get_boot_ns_in_xdp", "ktime_get_boot_ns"),
    ("btf_vmlinux", "BTF"),
    ("bpf_stats", "bpf_stats"),
    ("xdp_live_frames", "XDP live frames"),
]


# Suites known to fail, why, and the text in the run's Ansible output that shows it is that
# failure and no other. Such a suite is reported as "unsupported" and does not fail the run;
# any other failure on it still does.
KNOWN_UNSUPPORTED = {
    "bullseye": ("BCC 0.18: BPF_TABLE_PINNED takes no flags argument and does not create missing pinned maps",
                 "too many arguments provided to function-like macro invocation\\nBPF_TABLE_PINNED"),
}


class Fleet:
    def __init__(self, name: str, hosts: int, workdir: Path) -> None:
        self.name = name
        self.inventory = workdir / "lab-inventory.yml"
        self._lab("up", "--name", name, "--hosts", str(hosts), "--inventory", str(self.inventory))
        import yaml
        self.hosts = yaml.safe_load(self.inventory.read_text())["all"]["children"]["bpfleet_lab"]["hosts"]

    def _lab(self, *args: str) -> str:
        result = subprocess.run([sys.executable, str(LAB), *args], capture_output=True, text=True, timeout=180,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"bpfleet_lab.py {args} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def exec(self, host: str, command: str) -> str:
        result = subprocess.run([sys.executable, str(LAB), "exec", "--name", self.name, "--host", host, "--",
                                 "sh", "-c", command], capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"on {host}: {command!r} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def down(self) -> None:
        self._lab("down", "--name", self.name)


def run_guest(suite: str, fleet: Fleet, workdir: Path, cache: Path, index: int = 1, rerun_role: bool = True) -> dict:
    """Build or reuse the suite's image, boot it, run the check; always returns a result dict."""
    started = time.monotonic()
    result: dict = {"label": f"Debian {images.SUITES[suite]['debian']} ({suite})", "suite": suite,
                    "status": "fail", "timings": {}}
    try:
        meta = images.build(suite, cache)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        result["error"] = f"image build: {exc}"
        return result
    result["image"] = {k: meta.get(k) for k in ("kernel_release", "kernel_package", "headers_package",
                                                "headers_version", "bcc_version", "build_seconds", "cached")}
    result["image_seconds"] = round(time.monotonic() - started, 1)
    run_dir = workdir / f"vm-{suite}"
    vm = guest_mod.Guest(fleet.name, meta, run_dir, index=index)
    try:
        result["boot_seconds"] = round(vm.start(), 1)
        # The lab's "attacker" network is on-link, as on the namespace hosts (which hold an
        # address in it): a packet the filter fails to drop would reach the listener.
        vm.ssh("ip route replace 198.51.100.0/24 dev eth0")
        ansible = e2e.Ansible(fleet.inventory, {f"vm{index}": vm.inventory_vars()}, run_dir)
        checked = e2e.check(ansible, result["label"], f"vm{index}", vm.addresses["ipv4"],
                            lambda cmd: vm.ssh(cmd).stdout, vm.copy_to, SENDER, fleet.hosts[SENDER], fleet.name,
                            headers="exact", rerun_role=rerun_role)
        result.update(checked, label=result["label"])
    except e2e.CheckFailed as exc:
        result.update(exc.result, label=result["label"])
    except Exception as exc:  # noqa: BLE001 - boot failures are results too
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        vm.stop()
        result["wall_seconds"] = round(time.monotonic() - started, 1)
    if result["status"] == "fail" and suite in KNOWN_UNSUPPORTED:
        reason, signature = KNOWN_UNSUPPORTED[suite]
        logs = "".join(path.read_text(errors="replace") for path in sorted(run_dir.glob("ansible-*.log")))
        if signature in logs:
            result["status"] = "unsupported"
            result["unsupported_reason"] = reason
    e2e.progress(f"test {result['label']}: {result['status']} in {result['wall_seconds']:.0f} s")
    return result


def run_own(fleet: Fleet, workdir: Path) -> dict:
    """The machine's own kernel, on a lab namespace host (Debian 12 userland, generic headers)."""
    started = time.monotonic()
    release = os.uname().release
    result: dict = {"label": f"this machine ({release})", "suite": "own", "status": "fail", "timings": {}}
    try:
        ansible = e2e.Ansible(fleet.inventory, {}, workdir)

        def copy_to(source: Path, dest: str) -> None:
            fleet.exec(OWN, f"cp {source} {dest}")

        checked = e2e.check(ansible, result["label"], OWN, fleet.hosts[OWN]["lab_ipv4"],
                            lambda cmd: fleet.exec(OWN, cmd), copy_to, SENDER, fleet.hosts[SENDER], fleet.name,
                            headers="auto")
        result.update(checked, label=result["label"])
    except e2e.CheckFailed as exc:
        result.update(exc.result, label=result["label"])
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    e2e.progress(f"test {result['label']}: {result['status']} in {result['wall_seconds']:.0f} s")
    return result


def yes_no(features: dict, name: str) -> str:
    if name not in features:
        return "?"
    return "yes" if features[name] else "**no**"


def table(results: list) -> str:
    header = ["kernel", "BCC", "headers"] + [title for _name, title in COLUMNS] + ["native XDP", "result", "test time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        features = r.get("features") or {}
        headers = r.get("headers") or {}
        native = r.get("native_xdp")
        native_text = "?" if native is None else ("yes" if native.get("attached") else "no")
        result_text = {"pass": "pass", "refused": "refused (clean)",
                       "unsupported": "**unsupported** (BCC)"}.get(r["status"], "**FAIL**")
        release = r.get("release") or (r.get("image") or {}).get("kernel_release") or "?"
        lines.append("| " + " | ".join([
            f"{r['label']}: {release}" if r.get("suite") != "own" else r["label"],
            str(r.get("bcc_version") or (r.get("image") or {}).get("bcc_version") or "?"),
            str(headers.get("kind", "?")),
            *[yes_no(features, name) for name, _title in COLUMNS],
            native_text, result_text, f"{r['timings'].get('total', 0):.0f} s",
        ]) + " |")
    return "\n".join(lines) + "\n"


def details(results: list) -> str:
    out = []
    for r in results:
        out.append(f"- {r['label']}: {r['status']}")
        if r.get("image"):
            image = r["image"]
            out.append(f"  image: kernel {image['kernel_release']} ({image['kernel_package']}), "
                       f"{image['headers_package']} {image['headers_version']}, "
                       f"{'cached' if image['cached'] else 'built in %.0f s' % image['build_seconds']}")
        if r.get("boot_seconds") is not None:
            out.append(f"  boot to SSH: {r['boot_seconds']:.0f} s")
        if r.get("timings"):
            order = ["host_role", "facts", "policy_refused", "policy_apply", "traffic", "drops_records", "rerun",
                     "rerun_policy", "native_xdp", "total"]
            phases = sorted(r["timings"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
            out.append("  phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases))
        if r.get("kernel"):
            kernel = r["kernel"]
            missing = kernel.get("features_missing") or {}
            out.append("  missing: " + ("; ".join(f"{k} ({v})" for k, v in sorted(missing.items())) or "nothing")
                       + f"; unsupported: {kernel.get('unsupported') or 'none'}")
        if r.get("native_xdp"):
            out.append(f"  native XDP: {json.dumps(r['native_xdp'])}")
        if r.get("records"):
            out.append(f"  records: {json.dumps(r['records'])}; deny rule packets {r.get('deny_rule_packets')}")
        if r.get("unsupported_reason"):
            out.append(f"  unsupported: {r['unsupported_reason']}")
        if r.get("refusal"):
            out.append(f"  refusal: {r['refusal']}")
        if r.get("error"):
            out.append(f"  error: {r['error'][:1500]}")
    return "\n".join(out) + "\n"


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(images.SUITES))
    parser.add_argument("--no-own", action="store_true", help="skip this machine's own kernel")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-rerun-role", action="store_true",
                        help="on the guests, re-run only the policy (the role's re-run costs as much as its first run)")
    parser.add_argument("--parallel", type=int, default=int(os.environ.get("BPFLEET_KERNEL_PARALLEL", "1")),
                        help="guests booted at once (each takes 2 vCPUs and 2 GB; TCG is CPU-bound)")
    parser.add_argument("--cache", default=images.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(e2e.new_workdir("bpfleet-kmatrix-"))
    name = os.environ.get("BPFLEET_LAB_TAG", "") + "kmatrix"
    started = time.monotonic()
    fleet = Fleet(name, 2, workdir)
    results = []
    try:
        if not args.no_own:
            results.append(run_own(fleet, workdir))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            futures = [pool.submit(run_guest, suite, fleet, workdir, Path(args.cache), index, not args.no_rerun_role)
                       for index, suite in enumerate(suites, start=1)]
            results += [future.result() for future in futures]
    finally:
        fleet.down()
    total = time.monotonic() - started
    (out / "results.json").write_text(json.dumps({"results": results, "seconds": round(total, 1),
                                                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                                 indent=2, sort_keys=True) + "\n")
    text = table(results) + "\n" + details(results)
    (out / "matrix.md").write_text(text)
    print(text)
    print(f"kernel matrix: {len(results)} kernel(s) in {total:.0f} s; {out}/results.json, {out}/matrix.md")
    ok = all(r["status"] in ("pass", "refused", "unsupported") for r in results)
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir} (Ansible logs, guest consoles) for a look")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
