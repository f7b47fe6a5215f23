# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bpfleet-agent killed with SIGKILL in every crash window, under load, on a real ring buffer.

tests/bench/agent_throughput.py runs the checkout's agent on a ring buffer that a tc program
fills through BPF_PROG_TEST_RUN with sequence-numbered records, restarts the agent each time
it dies, and reads every output file back. Failpoints (BPFLEET_AGENT_FAILPOINT) kill the
worker at each step of a batch: after its cursor is written, halfway through the write,
after the write, after the ring space is released; another run kills it from outside every
0.5 s. Whatever the window: no record twice, no partial line, and every record the kernel
accepted is in the files (written + lost in the kernel == runs of the program).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BENCH = os.path.join(REPO, "tests", "bench", "agent_throughput.py")


def _skip_reason():
    if os.geteuid() != 0:
        return "needs root (bpf(2), a private mount namespace with bpffs)"
    if not shutil.which("unshare"):
        return "needs unshare (util-linux)"
    probe = subprocess.run(["/usr/bin/python3", "-c", "import bcc"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "BCC is not importable from /usr/bin/python3 (python3-bpfcc)"
    if not os.path.exists("/lib/modules/%s/build" % os.uname().release):
        return "no kernel headers for BCC (playbooks/host_local.yml prepares them)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.mark.parametrize("crash", ["failpoint=after-cursor:4", "failpoint=mid-write:4", "failpoint=after-write:4",
                                   "failpoint=after-release:4", "kill-every=0.5"])
def test_no_record_lost_or_duplicated_across_sigkill(crash, tmp_path):
    option, value = crash.split("=", 1)
    result = subprocess.run(
        [sys.executable, BENCH, "--rate", "20000", "--seconds", "2.5", "--ring-mb", "1", "--fields", "len,dst_port",
         "--out", str(tmp_path / "bench"), "--json", "--" + option, value],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["agent_restarts"] >= 2, report
    assert report["verify_duplicates"] == 0, report
    assert report["verify_unparsable"] == 0, report
    assert report["lost_agent"] == 0, report
    assert report["unaccounted"] == 0, report
    assert report["verify_lines"] + report["lost_kernel"] == report["runs"] == 50000, report


def test_overload_counts_every_record_the_ring_had_no_room_for(tmp_path):
    """More records than the agent can drain (2 M/s into a 1 MiB ring): the kernel loses some,
    counts each one, and what the agent wrote plus what was lost is exactly what was offered."""
    result = subprocess.run(
        [sys.executable, BENCH, "--rate", "2000000", "--seconds", "1.5", "--ring-mb", "1", "--fields", "all",
         "--out", str(tmp_path / "bench"), "--json", "--verify"],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"offered {report['runs']:,}: written {report['verify_lines']:,}, lost in the kernel "
          f"{report['lost_kernel']:,}, lost in the agent {report['lost_agent']:,}")
    assert report["lost_kernel"] > 0, report           # the overload really happened
    assert report["verify_duplicates"] == 0 and report["verify_unparsable"] == 0, report
    assert report["lost_agent"] == 0 and report["unaccounted"] == 0, report
    assert report["verify_lines"] + report["lost_kernel"] == report["runs"] > 0, report
