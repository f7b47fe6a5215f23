"""A reduced run on one suite's guest: facts (feature probes) and the policy, without the host role.

    probe_only.py SUITE [--out FILE]

For a suite the full check cannot pass (Debian 11: BCC 0.18), this shows what its kernel
offers and how the policy fails on it, at a fraction of the cost: the image already has BCC
and the exact headers, so the role (most of a guest's time under TCG) is skipped. Writes a
result dict as JSON (features, the policy's outcome, what is left under /sys/fs/bpf/bpfleet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402
import guest as guest_mod  # noqa: E402
import images  # noqa: E402
import matrix  # noqa: E402


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(images.SUITES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    workdir = e2e.new_workdir("bpfleet-kprobe-")
    fleet = matrix.Fleet(os.environ.get("BPFLEET_LAB_TAG", "") + "kprobe", 1, workdir)
    result: dict = {"suite": args.suite, "reduced": "facts and policy only, no host role"}
    try:
        meta = images.build(args.suite, Path(images.DEFAULT_CACHE))
        result["image"] = {k: meta.get(k) for k in ("kernel_release", "bcc_version", "headers_package")}
        vm = guest_mod.Guest(fleet.name, meta, workdir / "vm", index=4)
        try:
            result["boot_seconds"] = round(vm.start(), 1)
            ansible = e2e.Ansible(fleet.inventory, {"vm4": vm.inventory_vars()}, workdir / "vm")
            started = time.monotonic()
            facts, _recap, _output = ansible.play("vm4", [e2e.facts_task()])
            result["kernel"] = facts[0]["ansible_facts"]["bpfleet"]["kernel"]
            result["facts_seconds"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            outcome, _recap, _output = ansible.play("vm4", [e2e.policy_task(e2e.POLICY)], ignore_errors=True)
            policy = outcome[0] or {}
            result["policy"] = {"failed": policy.get("failed"), "stage": policy.get("stage"),
                                "msg": policy.get("msg"), "changed": policy.get("changed"),
                                "log_head": (policy.get("log") or "")[-1500:]}
            result["policy_seconds"] = round(time.monotonic() - started, 1)
            result["left_on_host"] = vm.ssh("find /sys/fs/bpf/bpfleet /var/lib/bpfleet 2>/dev/null; "
                                            "ip -d link show eth0 | grep -c xdp || true").stdout
        finally:
            vm.stop()
    finally:
        fleet.down()
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
