# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mutation check: break the guarantees that matter most on purpose and show a test fails.

    .venv/bin/python tests/mutation/run.py                 # every mutant (as root, after the host stage)
    .venv/bin/python tests/mutation/run.py cookie-not-redacted deny-lookup-skipped
    .venv/bin/python tests/mutation/run.py --list

Each mutant is one textual change of one product file (the text to replace must be found
exactly as often as stated, so a refactor that moves the code makes the script fail loudly
instead of testing nothing). For each mutant the script copies the tree (the files git would
commit) to a scratch directory, applies the change, and runs the mutant's targeted tests
there with pytest. A mutant is

    killed    when at least one targeted test fails (the failing tests are listed),
    SURVIVED  when all of them pass: the tests cannot see that guarantee break,
    ERROR     when pytest could not run them (exit status other than 0 or 1).

The same targeted tests first run on an unmutated copy (the baseline): they must all pass and
none may skip, or a "kill" would prove nothing. Skips are not failures here (CI is unset for
the inner pytest runs); a mutant whose run skipped tests and failed none is SURVIVED.

Exit status: 0 when every selected mutant was killed, 1 otherwise. The last lines are the
table "mutant / result / killed by" and "mutants: N killed, M survived, K errors".
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Mutant:
    name: str
    guarantee: str
    path: str
    old: str
    new: str
    tests: list[str]
    occurrences: int = 1
    env: dict = field(default_factory=dict)



MUTANTS = [
    Mutant(
        name="cookie-not-redacted",
        guarantee="the Cookie header is redacted by default (kernel constants and agent parser)",
        path="plugins/module_utils/_http.py",
        old='DEFAULT_REDACT_NAMES = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")',
        new='DEFAULT_REDACT_NAMES = ("authorization", "proxy-authorization", "set-cookie", "x-api-key")',
        tests=["tests/unit/plugins/module_utils/test_http_parser.py",
               "tests/unit/plugins/module_utils/test_http_kernel.py"],
    ),
    Mutant(
        name="deny-lookup-skipped",
        guarantee="the XDP filter looks an IPv4 source up in the deny trie",
        path="bpf/bpfleet.c.j2",
        old="        rule = deny_v4.lookup(&key);\n",
        new="        rule = 0;  /* mutant: deny_v4 lookup skipped */\n",
        tests=["tests/unit/plugins/module_utils/test_http_kernel.py"],
    ),
    Mutant(
        name="agent-cursor-not-written",
        guarantee="the agent writes its cursor before each batch (no loss, no duplicate across kill -9)",
        path="roles/host/files/bpfleet_agent.py",
        old="        os.pwrite(self.fd, document.ljust(CURSOR_SIZE - 1) + b\"\\n\", 0)\n",
        new="        pass  # mutant: cursor write dropped\n",
        tests=["tests/unit/roles/test_agent_crash.py"],
    ),
    Mutant(
        name="lockout-guard-skipped",
        guarantee="the policy module refuses a policy that drops the controller's SSH connection",
        path="plugins/modules/policy.py",
        old='    if dropped and not module.params["allow_lockout"]:\n',
        new='    if False:  # mutant: lockout check skipped\n',
        tests=["tests/integration/test_policy_lifecycle.py::"
               "test_lockout_guard_refuses_a_policy_that_cuts_the_controller_off"],
    ),
    Mutant(
        name="lockout-verdict-never-drops",
        guarantee="the lockout guard's verdict sees a deny entry that matches the controller",
        path="plugins/module_utils/_lockout.py",
        old='        return True, "it matches filter.deny %s" % denied\n',
        new='        return False, "it matches filter.deny %s" % denied  # mutant\n',
        tests=["tests/unit/plugins/module_utils/test_lockout.py"],
    ),
]


def log(message: str) -> None:
    print(message, flush=True)


def copy_tree(destination: Path) -> None:
    """The files git would commit (tracked plus untracked-not-ignored), as scripts/test.sh's sanity copy."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    destination.mkdir(parents=True)
    for raw in listed:
        if not raw:
            continue
        relative = raw.decode()
        if relative.split("/", 1)[0] in (".venv", ".tmp", ".git", "tests/output"):
            continue
        source = REPO / relative
        if not (source.exists() or source.is_symlink()):
            continue                       # deleted in the working tree
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    link = destination / ".tmp" / "collections" / "ansible_collections" / "bpfleet" / "core"
    link.parent.mkdir(parents=True)
    link.symlink_to(destination)


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != mutant.occurrences:
        raise SystemExit(f"mutant {mutant.name}: {mutant.path} holds the text to replace {found} time(s), "
                         f"expected {mutant.occurrences}: update tests/mutation/run.py to the code as it is now")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(tree: Path, tests: list[str], label: str, workdir: Path) -> dict:
    junit = workdir / f"{label}.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "BPFLEET_UPDATE_GOLDEN")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tree / ".tmp" / "collections")
    # Lab fleets of these runs are named apart from those of a test run in the same checkout.
    env["BPFLEET_LAB_TAG"] = env.get("BPFLEET_LAB_TAG", "") + "mu"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", *tests]
    started = time.monotonic()
    with open(workdir / f"{label}.log", "w") as output:
        rc = subprocess.run(argv, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, check=False).returncode
    failed, skipped, total = [], [], 0
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            total += 1
            name = "%s::%s" % (case.get("classname", "").rsplit(".", 1)[-1], case.get("name"))
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            elif case.find("skipped") is not None:
                skipped.append(name)
    return {"rc": rc, "failed": failed, "skipped": skipped, "total": total,
            "seconds": time.monotonic() - started, "log": workdir / f"{label}.log"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants", nargs="*", help="names of mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not for CI)")
    parser.add_argument("--workdir", help="scratch directory (default: a new one under /tmp; kept on failure)")
    args = parser.parse_args(argv)

    known = {m.name: m for m in MUTANTS}
    unknown = [name for name in args.mutants if name not in known]
    if unknown:
        parser.error("unknown mutant(s) %s (known: %s)" % (", ".join(unknown), ", ".join(known)))
    selected = [known[name] for name in args.mutants] if args.mutants else MUTANTS
    if args.list:
        for m in MUTANTS:
            log(f"{m.name}: {m.guarantee}\n    {m.path}\n    tests: {' '.join(m.tests)}")
        return 0

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bpfleet-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"mutation check: {len(selected)} mutant(s), scratch directory {workdir}")

    ok = True
    if not args.no_baseline:
        tests = sorted({t for m in selected for t in m.tests})
        tree = workdir / "baseline"
        copy_tree(tree)
        log(f"-- baseline (no mutation): {' '.join(tests)}")
        base = run_tests(tree, tests, "baseline", workdir)
        log(f"   {base['total']} tests, {len(base['failed'])} failed, {len(base['skipped'])} skipped, "
            f"exit {base['rc']}, {base['seconds']:.0f} s")
        if base["rc"] != 0 or base["failed"] or base["skipped"] or not base["total"]:
            log(f"mutation check: the targeted tests do not all pass unmutated (failed: {base['failed']}, "
                f"skipped: {base['skipped']}): a kill would prove nothing. Output: {base['log']}")
            return 1
        shutil.rmtree(tree)

    rows = []
    for mutant in selected:
        tree = workdir / mutant.name
        copy_tree(tree)
        apply(mutant, tree)
        log(f"-- {mutant.name}: {mutant.guarantee}\n   {mutant.path}: {mutant.old.strip()!r} -> {mutant.new.strip()!r}")
        result = run_tests(tree, mutant.tests, mutant.name, workdir)
        if result["rc"] == 1 and result["failed"]:
            verdict = "killed"
        elif result["rc"] == 0:
            verdict = "SURVIVED"
        else:
            verdict = "ERROR"
        log(f"   {verdict} ({result['total']} tests, {len(result['failed'])} failed, {len(result['skipped'])} "
            f"skipped, exit {result['rc']}, {result['seconds']:.0f} s)")
        for name in result["failed"]:
            log(f"     failed: {name}")
        if verdict != "killed":
            ok = False
            log(f"   output: {result['log']}")
        else:
            shutil.rmtree(tree)
        rows.append((mutant.name, verdict, result["failed"]))

    log("\n%-30s %-9s %s" % ("MUTANT", "RESULT", "KILLED BY (failing tests)"))
    for name, verdict, failed in rows:
        shown = ", ".join(failed[:3]) + (" and %d more" % (len(failed) - 3) if len(failed) > 3 else "")
        log("%-30s %-9s %s" % (name, verdict, shown or "-"))
    counts = {v: sum(1 for _n, verdict, _f in rows if verdict == v) for v in ("killed", "SURVIVED", "ERROR")}
    log(f"mutants: {counts['killed']} killed, {counts['SURVIVED']} survived, {counts['ERROR']} errors "
        f"(of {len(rows)})")
    if ok and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
