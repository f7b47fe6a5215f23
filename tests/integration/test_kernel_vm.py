"""Debian 12's stock kernel (6.1) in a real virtual machine, end to end (issue 13, part 4).

A qemu guest (TCG) booted from a cached mmdebstrap image sits on a lab fleet's bridge; the
controller drives it over SSH like any lab host: host role with the exact
linux-headers-$(uname -r), facts with the probed features, the lab-edge policy, real
traffic from a lab host's allowed and denied addresses, drops and header records, an
idempotent re-run (of the policy; of the role too with BPFLEET_KERNEL_VM_RERUN_ROLE=1),
and native XDP on virtio-net. `make kernel-matrix` runs the same check on every suite
(tests/kernels/matrix.py) and this machine's kernel.

BPFLEET_KERNEL_VM=0 skips it; BPFLEET_KERNEL_VM_SUITES=bullseye,bookworm,trixie widens it.
The first run on a machine builds the image (about 2-3 minutes, cached afterwards in
/var/cache/bpfleet-kernels, or BPFLEET_KERNEL_CACHE).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "kernels"))
import e2e  # noqa: E402
import images  # noqa: E402
import matrix  # noqa: E402

pytestmark = pytest.mark.integration

# The role's second run costs as much as its first under TCG (every task is a Python start in
# the guest); CI re-runs the policy only, `make kernel-matrix` both. BPFLEET_KERNEL_VM_RERUN_ROLE=1
# re-runs the role here too.
RERUN_ROLE = os.environ.get("BPFLEET_KERNEL_VM_RERUN_ROLE", "0") == "1"
SUITES = [s for s in os.environ.get("BPFLEET_KERNEL_VM_SUITES", "bookworm").split(",") if s]


def missing_requirement() -> str | None:
    if os.environ.get("BPFLEET_KERNEL_VM", "1") == "0":
        return "BPFLEET_KERNEL_VM=0"
    if os.geteuid() != 0:
        return "needs root: namespaces, a tap device, mmdebstrap"
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"{tool} not found (scripts/bootstrap.sh installs qemu-system-x86 qemu-utils mmdebstrap e2fsprogs)"
    return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("kvm")
    lab = matrix.Fleet(os.environ.get("BPFLEET_LAB_TAG", "") + "itkvm", 1, workdir)
    try:
        yield lab, workdir
    finally:
        lab.down()


@pytest.mark.parametrize("suite", SUITES)
def test_stock_kernel_in_a_vm_end_to_end(fleet, suite):
    lab, workdir = fleet
    result = matrix.run_guest(suite, lab, workdir, Path(images.DEFAULT_CACHE), rerun_role=RERUN_ROLE)
    summary = json.dumps({k: result.get(k) for k in ("status", "error", "release", "bcc_version", "headers",
                                                     "timings", "boot_seconds", "image_seconds", "received",
                                                     "records", "native_xdp", "rerun")}, indent=1, default=str)
    print(summary)
    assert result["status"] == "pass", summary
    # The exact headers Debian ships for its own kernel, not the generic fallback.
    assert result["headers"]["kind"] == "exact", summary
    assert result["release"] == result["image"]["kernel_release"], summary
    features = result["features"]
    assert features["map_ringbuf"] and features["prog_type_xdp"], summary
    assert result["rerun"] == {"changed": 0, "compiled": False, "role": RERUN_ROLE}, summary
    assert result["records"]["denied_dropped"] >= e2e.COUNT, summary
