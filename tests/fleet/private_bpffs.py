# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compile, verify and pin rendered policies with BCC in a private bpffs, for tests and benchmarks
that feed the programs frames with BPF_PROG_TEST_RUN.

BCC lives in Debian's /usr/bin/python3 (python3-bpfcc), the tests run in the controller's venv:
one helper process on /usr/bin/python3, inside its own mount namespace with its own bpffs (nothing
lands in /sys/fs/bpf of the machine, nothing is attached to any interface), compiles every policy
with the collection's own backend and reports the ids of the pinned programs and maps. The caller
opens them by id while the helper waits; once it lets the helper go, the namespace and its pins
vanish and the caller's fds keep the objects alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(REPO, ".tmp", "collections")
HOST_PYTHON = "/usr/bin/python3"

_HELPER = r"""
import json, os, sys
config = json.loads(sys.stdin.readline())
sys.path.insert(0, config["collections"])
from ansible_collections.bpfleet.core.plugins.module_utils import _bcc_backend, _bpf_syscall as bpf, _features
report = {}
probed = _features.probe(use_cache=False, write_cache=False)[0]
for policy in config["policies"]:
    pin_dir = "/sys/fs/bpf/bpfleet/" + policy["name"]
    os.makedirs(pin_dir + "/maps")
    # mask_features: compile the fallback paths, as a kernel without those features would.
    features = _features.apply_mask(probed, policy.get("mask_features") or [])
    try:
        pinned = _bcc_backend.compile_and_pin(policy["source"], policy["programs"], pin_dir, "",
                                              features_header=_features.header(features))
    except _bcc_backend.CompileError as error:
        report[policy["name"]] = {"error": "%s\n%s" % (error, error.log[-3000:])}
        continue
    entry = {"programs": {}, "maps": {}, "features": features}
    for pin, path in pinned.items():
        with bpf.open_pinned(path) as fd:
            entry["programs"][pin] = bpf.prog_info(fd)
    for name in os.listdir(pin_dir + "/maps"):
        with bpf.open_pinned(pin_dir + "/maps/" + name) as fd:
            entry["maps"][name] = bpf.map_info(fd)["id"]
    report[policy["name"]] = entry
print(json.dumps(report), flush=True)
sys.stdin.readline()        # the caller holds its own fds now; the namespace may go
"""


def skip_reason(headers=True):
    """Why this machine cannot compile and test-run programs here, or None."""
    if not sys.platform.startswith("linux"):
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root: bpf(2), a private mount namespace with bpffs, BPF_PROG_TEST_RUN"
    for tool in ("unshare", "mount"):
        if not shutil.which(tool):
            return "needs %s (util-linux)" % tool
    if not os.path.exists(HOST_PYTHON):
        return "needs %s" % HOST_PYTHON
    if subprocess.run([HOST_PYTHON, "-c", "import bcc"], capture_output=True, check=False).returncode != 0:
        return "BCC is not importable from %s (install python3-bpfcc)" % HOST_PYTHON
    if headers and not os.path.exists("/lib/modules/%s/build" % os.uname().release):
        return ("no kernel headers for BCC at /lib/modules/%s/build: prepare this machine with "
                "playbooks/host_local.yml (scripts/test.sh's host stage does)" % os.uname().release)
    return None


@contextlib.contextmanager
def pinned_policies(policies, timeout=120):
    """Yields {policy name: {"programs": {pin: prog_info}, "maps": {map name: id}}} (or
    {"error": compile or verifier log}) while the programs and maps are still pinned.

    `policies`: [{"name", "source", "programs"}] as _render.render() gives them; any C source
    with BCC-style programs works (the benchmarks add a bare XDP_PASS program).
    """
    helper = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t bpf bpf /sys/fs/bpf && exec "$0" -c "$1"', HOST_PYTHON, _HELPER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        helper.stdin.write(json.dumps({"collections": COLLECTIONS, "policies": policies}) + "\n")
        helper.stdin.flush()
        line = helper.stdout.readline()
        if not line:
            raise RuntimeError("BCC helper failed:\n" + helper.stderr.read()[-4000:])
        threading.Thread(target=helper.stderr.read, daemon=True).start()
        yield json.loads(line)
    finally:
        helper.stdin.close()
        helper.wait(timeout=timeout)
