# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where bpfleet keeps its pins and its records on a host (docs/architecture.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _safe_files

BPFFS_ROOT = _contract.BPFFS_ROOT
PIN_ROOT = _contract.PIN_ROOT
STATE_ROOT = _contract.STATE_ROOT
AGENT_STATUS = _contract.RUN_DIR + "/agent-status.json"
AGENT_PIDFILE = _contract.RUN_DIR + "/agent.pid"
STATE_SCHEMA = _contract.STATE_SCHEMA


def pin_dir(name):
    return os.path.join(PIN_ROOT, name)


def map_pin(name, map_name):
    return os.path.join(PIN_ROOT, name, "maps", map_name)


def prog_pin(name, pin):
    return os.path.join(PIN_ROOT, name, pin)


def state_dir(name):
    return os.path.join(STATE_ROOT, name)


def state_file(name):
    return os.path.join(STATE_ROOT, name, "state.json")


def applied_file(name):
    """The rendered policy applied now (without its C source): _history writes it."""
    return os.path.join(STATE_ROOT, name, "applied.json")


def program_file(name):
    return os.path.join(STATE_ROOT, name, "program.c")


def features_file(name):
    """The bpfleet_features.h the applied program was compiled with (beside program.c)."""
    return os.path.join(STATE_ROOT, name, "bpfleet_features.h")


def bpffs_mounted():
    """True when a bpf filesystem is mounted at /sys/fs/bpf (pins need it)."""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[1] == BPFFS_ROOT and fields[2] == "bpf":
                    return True
    except OSError:
        pass
    return False


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def write_atomic(path, text, mode=0o640):
    """Write through a temporary file and rename, so a reader never sees half a file."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    # In the directory's fd, through a fresh O_EXCL|O_NOFOLLOW temporary file: a symlink
    # planted at either name is replaced, never written through (docs/security.md).
    _safe_files.write_atomic_in(directory, os.path.basename(path), text.encode("utf-8"), mode, sync=True)


def applied_policies():
    """Names of the policies with a state file on this host."""
    try:
        names = sorted(os.listdir(STATE_ROOT))
    except OSError:
        return []
    return [name for name in names if os.path.isfile(state_file(name))]
