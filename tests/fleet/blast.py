"""Build and run bpfleet-blast (tests/fleet/blast.c), the lab's fast UDP flood sender.

    blast.py build                     compile if needed, print the binary's path
    blast.py [BLAST OPTIONS...]        compile if needed, then run it (see blast.c)
    blast.py lab --name F --host h1 [BLAST OPTIONS...]
                                       run it inside lab host h1 of fleet F (bpfleet_lab.py exec)

The binary goes to .tmp/bin/bpfleet-blast (gcc -O2), rebuilt when blast.c's sha256 changes
(recorded in .tmp/bin/bpfleet-blast.sha256). From Python: `binary()` and `run_in_lab()`,
which returns the JSON line the sender prints: {"sent": N, "seconds": S, "pps": X, ...}.

Standard library only (Python 3.9+): it also runs as /usr/bin/python3 inside lab hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCE = HERE / "blast.c"
LAB = HERE / "bpfleet_lab.py"
BINARY = REPO / ".tmp" / "bin" / "bpfleet-blast"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


class BlastError(Exception):
    """Build or run failure, with the compiler's or sender's own message."""


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()


def binary(target: Path = BINARY) -> Path:
    """Path of an up-to-date bpfleet-blast, compiling blast.c first when it changed."""
    digest = source_digest()
    stamp = target.with_name(target.name + ".sha256")
    if target.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return target
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BlastError("no C compiler: apt-get install gcc")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed: a concurrent run never executes a half-written file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    result = subprocess.run([compiler, *CFLAGS, "-o", str(partial), str(SOURCE)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BlastError(f"compiling {SOURCE} failed:\n{result.stderr}")
    os.replace(partial, target)
    stamp.write_text(digest + "\n")
    return target


def parse_report(stdout: str) -> dict:
    """The sender's JSON line (the last line of its output)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise BlastError("bpfleet-blast printed nothing")
    report = json.loads(lines[-1])
    for key in ("sent", "seconds", "pps"):
        if key not in report:
            raise BlastError(f"bpfleet-blast report lacks {key!r}: {lines[-1]}")
    return report


def options_argv(options: dict) -> list[str]:
    """{"iface": "eth0", "dst_mac": ...} -> ["--iface", "eth0", "--dst-mac", ...]; None is left out."""
    argv = []
    for key, value in options.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def run_in_lab(fleet: str, host: str, timeout: float = 120.0, workdir: str | None = None, **options) -> dict:
    """Run bpfleet-blast inside a lab host and return its report.

    run_in_lab("bnx", "h1", iface="eth0", src="198.51.100.11", dst="203.0.113.12",
               dst_mac="02:62:66:6c:00:02", count=100000)
    """
    path = binary()
    lab_args = ["exec", "--name", fleet, "--host", host]
    if workdir:
        lab_args += ["--workdir", workdir]
    command = [sys.executable, str(LAB), *lab_args, "--", str(path), *options_argv(options)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise BlastError(f"bpfleet-blast in {fleet}/{host} failed (rc={result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return parse_report(result.stdout)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["build"]:
            print(binary())
            return 0
        if argv[:1] == ["lab"]:
            import argparse

            parser = argparse.ArgumentParser(prog="blast.py lab")
            parser.add_argument("--name", required=True)
            parser.add_argument("--host", required=True)
            parser.add_argument("--workdir")
            known, rest = parser.parse_known_args(argv[1:])
            lab_args = ["exec", "--name", known.name, "--host", known.host]
            if known.workdir:
                lab_args += ["--workdir", known.workdir]
            path = binary()
            os.execv(sys.executable, [sys.executable, str(LAB), *lab_args, "--", str(path), *rest])
        path = binary()
        os.execv(str(path), [str(path), *argv])
    except BlastError as exc:
        print(f"blast.py: error: {exc}", file=sys.stderr)
        return 2
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
