# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Least privilege (plugins/module_utils/_privdrop.py, docs/security.md): after drop(), a
root process keeps only CAP_BPF, bpf(2) still works, what it executes gets nothing more,
and what needed another capability (chown to another user) fails."""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _privdrop

PROBE = r"""
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall, _privdrop
sets = _privdrop.drop()
result = {"sets": sets}
fd = _bpf_syscall.map_create(2, 4, 8, 4, name="privdrop_probe")      # BPF_MAP_TYPE_ARRAY
result["bpf_map_create"] = fd >= 0
os.close(fd)
path = sys.argv[2]
with open(path, "w") as handle:                                       # root-owned file: owner write, no DAC override
    handle.write("x")
try:
    os.chown(path, 65534, 65534)
    result["chown"] = "allowed"
except PermissionError:
    result["chown"] = "refused"
child = subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
result["child"] = dict((line.split(":")[0], int(line.split(":")[1], 16)) for line in child.splitlines()
                       if line.startswith("Cap"))
print(json.dumps(result))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drop_keeps_only_cap_bpf_for_the_process_and_its_children(tmp_path):
    collections = os.path.abspath(os.path.join(os.path.dirname(_privdrop.__file__), "..", "..", "..", "..", ".."))
    result = subprocess.run([sys.executable, "-c", PROBE, collections, str(tmp_path / "owned")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    kept = sum(1 << cap for cap in _privdrop.needed_caps())
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert report["sets"][key] == kept, (key, hex(report["sets"][key]))
        assert report["child"][key] == kept, (key, hex(report["child"][key]))
    assert report["sets"]["CapInh"] == 0 and report["sets"]["CapAmb"] == 0
    assert report["bpf_map_create"] is True
    assert report["chown"] == "refused"
    assert (tmp_path / "owned").read_text() == "x"


def test_describe_names_the_kept_capabilities():
    assert _privdrop.describe(1 << _privdrop.CAP_BPF) == ["CAP_BPF"]
    assert _privdrop.describe((1 << 21) | 1) == ["cap_0", "CAP_SYS_ADMIN"]
