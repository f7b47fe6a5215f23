# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Least privilege for bpfleet-agent in both service modes (docs/security.md).

The agent stays uid 0 (its pins, state, logs and run files belong to root, which writes them
as their owner, without CAP_DAC_OVERRIDE) but keeps a single capability: CAP_BPF, which every
bpf(2) command it issues needs (BPF_OBJ_GET of the pins, map lookups, the ring buffer's
mmap), and which it needs for as long as it runs, because a policy applied later brings new
pins. On kernels without CAP_BPF (before 5.8) bpf(2) needs CAP_SYS_ADMIN instead, and that
is kept. Everything else is dropped from the bounding, permitted, effective, inheritable and
ambient sets, and no_new_privs is set, so neither this process nor anything it executes (the
supervisor's workers) gets another capability back: for uid 0, execve() grants the bounding
set, which now holds only what is kept.

Under systemd the unit's CapabilityBoundingSet= already does this; the supervised mode
(hosts without systemd) had root's full set until this ran. Standard library only (ctypes
over libc's prctl and capset), Python 3.9+; the agent imports a copy placed next to it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno
import os

CAP_SYS_ADMIN = 21
CAP_BPF = 39
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 40


def needed_caps():
    """CAP_BPF where the kernel knows it, else CAP_SYS_ADMIN (bpf(2) before Linux 5.8)."""
    return (CAP_BPF,) if last_cap() >= CAP_BPF else (CAP_SYS_ADMIN,)


def capability_sets(pid="self"):
    """{'CapEff': int, 'CapPrm': ..., 'CapBnd': ..., 'CapInh': ..., 'CapAmb': ...} from /proc."""
    sets = {}
    try:
        with open("/proc/%s/status" % pid) as handle:
            for line in handle:
                if line.startswith("Cap"):
                    key, value = line.split(":", 1)
                    sets[key] = int(value.strip(), 16)
    except OSError:
        pass
    return sets


def describe(mask):
    names = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_BPF: "CAP_BPF"}
    return [names.get(bit, "cap_%d" % bit) for bit in range(64) if mask >> bit & 1]


def drop(keep=None):
    """Keep only `keep` (default needed_caps()); returns the capability sets now. Raises
    OSError when a step fails (the caller decides whether to go on)."""
    keep = tuple(needed_caps() if keep is None else keep)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def check(result, what):
        if result != 0:
            code = ctypes.get_errno()
            raise OSError(code, "%s: %s" % (what, os.strerror(code)))

    # Bounding set first: it needs CAP_SETPCAP, which goes with the capset below. Only what
    # is still there (under systemd the unit's bounding set is already this small, and
    # without CAP_SETPCAP even dropping an absent capability fails).
    bounding = capability_sets().get("CapBnd", (1 << 64) - 1)
    for cap in range(last_cap() + 1):
        if cap in keep or not bounding >> cap & 1:
            continue
        if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() not in (errno.EINVAL,):
            check(-1, "PR_CAPBSET_DROP %d" % cap)
    if prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
        check(-1, "PR_CAP_AMBIENT_CLEAR_ALL")
    check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    data = (_Data * 2)()
    for cap in keep:
        data[cap // 32].effective |= 1 << (cap % 32)
        data[cap // 32].permitted |= 1 << (cap % 32)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    check(libc.capset(ctypes.byref(header), data), "capset")
    return capability_sets()
