# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this host's kernel offers bpfleet, learnt by asking it (docs/compatibility.md).

Version numbers lie: vendor builds switch helpers off (6.18.44-fc-v1300 refuses
bpf_xdp_adjust_meta in XDP programs, v1252 of the same 6.18.44 allowed it) and backports
switch them on. So, as `bpftool feature probe` and Cilium's probes do, each feature is
learnt by loading a tiny program or creating a tiny map, and the verifier's own answer
decides. The answers become `bpfleet_features.h`, the one place the C program learns them
(HAVE_* macros), and `ansible_facts.bpfleet.kernel`.

Each feature is either required (no fallback: the host is refused before anything on it
changes, naming the feature and the first kernel that has it) or optional with a fallback
that is compiled and tested (tests/integration/test_kernel_features.py masks each one).

Probing costs a few milliseconds; the result is cached per kernel build and boot (a
reboot into the same kernel may load other modules or sysctls) in FEATURES_CACHE.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import platform

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _contract

# Bump when a probe changes meaning, so cached answers of an older probe set are not reused.
PROBE_VERSION = 2
FEATURES_CACHE = "/var/lib/bpfleet/kernel-features.json"
FEATURES_HEADER = "bpfleet_features.h"
BOOT_ID = "/proc/sys/kernel/random/boot_id"

PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_XDP = 6
PROG_TYPE_NAMES = {PROG_TYPE_SCHED_CLS: "sched_cls", PROG_TYPE_XDP: "xdp"}

MAP_TYPE_LRU_HASH = _contract.MAP_TYPE_LRU_HASH
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
_UNKNOWN_TEST_RUN_FLAG = 1 << 30

# Helper ids of include/uapi/linux/bpf.h (stable ABI numbers).
HELPERS = {
    "map_lookup_elem": 1,
    "map_update_elem": 2,
    "ktime_get_ns": 5,
    "get_prandom_u32": 7,
    "skb_store_bytes": 9,
    "l3_csum_replace": 10,
    "skb_vlan_push": 18,
    "skb_vlan_pop": 19,
    "skb_load_bytes": 26,
    "xdp_adjust_meta": 54,
    "ktime_get_boot_ns": 125,
    "ringbuf_output": 130,
    "ringbuf_reserve": 131,
    "ringbuf_submit": 132,
}

# The verifier's words for "this program type may not call that helper" (kernel/bpf/verifier.c,
# check_helper_call, across 4.x-6.x). Any other refusal means the helper exists and the probe's
# arguments were wrong, which is what bpftool concludes too.
_HELPER_REFUSALS = ("unknown func", "invalid func", "cannot use helper")


REPORTED_ONLY = "reported only"


class Feature:
    """One probed capability.

    `macro` is the HAVE_* name in bpfleet_features.h; `fallback` says what the program does
    without it (None: required, the host is refused); `since` is the first mainline kernel
    that has it, for messages and docs.
    """

    def __init__(self, name, kind, probe_args, since, fallback=None, macro=None, doc=""):
        self.name = name
        self.kind = kind
        self.probe_args = probe_args
        self.since = since
        self.fallback = fallback
        self.macro = macro
        self.doc = doc

    @property
    def required(self):
        return self.fallback is None


def _helper(prog_type, helper, since, fallback=None, macro=None, doc=""):
    name = "%s_in_%s" % (helper, PROG_TYPE_NAMES[prog_type])
    return Feature(name, "helper", (prog_type, HELPERS[helper]), since, fallback, macro, doc)


# Every helper the programs in bpf/ call, per program type, and every map and program type
# they create. Keep in step with bpf/: tests/unit/.../test_features.py checks that each
# bpf_* call and map type in the rendered programs has a probe here.
FEATURES = [
    Feature("prog_type_xdp", "prog_type", (PROG_TYPE_XDP,), "4.8", doc="XDP programs (the filter)"),
    Feature("prog_type_sched_cls", "prog_type", (PROG_TYPE_SCHED_CLS,), "4.1",
            doc="tc classifier programs (the loggers)"),
    Feature("map_lpm_trie", "map_type", (bpf.MAP_TYPE_LPM_TRIE, 8, 4, 1, bpf.BPF_F_NO_PREALLOC), "4.11",
            doc="longest-prefix-match maps (the CIDR lists)"),
    Feature("map_percpu_array", "map_type", (bpf.MAP_TYPE_PERCPU_ARRAY, 4, 16, 1, 0), "4.6",
            doc="per-CPU arrays (counters)"),
    Feature("map_percpu_hash", "map_type", (bpf.MAP_TYPE_PERCPU_HASH, 8, 16, 1, 0), "4.6",
            doc="per-CPU hashes (per-rule counters)"),
    Feature("map_lru_hash", "map_type", (MAP_TYPE_LRU_HASH, 24, 16, 1, 0), "4.10",
            doc="LRU hashes (rate-limit buckets)"),
    Feature("map_ringbuf", "map_type", (bpf.MAP_TYPE_RINGBUF, 0, 0, 4096, 0), "5.8",
            doc="the BPF ring buffer (header records)"),
    _helper(PROG_TYPE_XDP, "map_lookup_elem", "4.8"),
    _helper(PROG_TYPE_XDP, "map_update_elem", "4.8"),
    _helper(PROG_TYPE_XDP, "ktime_get_ns", "4.8"),
    _helper(PROG_TYPE_XDP, "get_prandom_u32", "4.8"),
    _helper(PROG_TYPE_XDP, "ringbuf_output", "5.8"),
    _helper(PROG_TYPE_XDP, "ringbuf_reserve", "5.8"),
    _helper(PROG_TYPE_XDP, "ringbuf_submit", "5.8"),
    _helper(PROG_TYPE_XDP, "ktime_get_boot_ns", "5.8", macro="HAVE_KTIME_GET_BOOT_NS",
            fallback="records are stamped with bpf_ktime_get_ns (monotonic: stops while the host is suspended)",
            doc="record time stamps on the boot clock"),
    _helper(PROG_TYPE_XDP, "xdp_adjust_meta", "4.15", macro="HAVE_XDP_ADJUST_META",
            fallback="the tc ingress logger classifies each logged packet again (list lookups, no tokens)",
            doc="XDP hands its verdict to the tc ingress logger in the frame's metadata"),
    _helper(PROG_TYPE_SCHED_CLS, "map_lookup_elem", "4.1"),
    _helper(PROG_TYPE_SCHED_CLS, "map_update_elem", "4.1"),
    _helper(PROG_TYPE_SCHED_CLS, "ktime_get_ns", "4.1"),
    _helper(PROG_TYPE_SCHED_CLS, "get_prandom_u32", "4.1"),
    _helper(PROG_TYPE_SCHED_CLS, "skb_load_bytes", "4.5"),
    _helper(PROG_TYPE_SCHED_CLS, "skb_store_bytes", "4.1", doc="header rewrites (DSCP)"),
    _helper(PROG_TYPE_SCHED_CLS, "l3_csum_replace", "4.1", doc="header rewrites (IPv4 checksum)"),
    _helper(PROG_TYPE_SCHED_CLS, "skb_vlan_push", "4.3", doc="header rewrites (VLAN push)"),
    _helper(PROG_TYPE_SCHED_CLS, "skb_vlan_pop", "4.3", doc="header rewrites (VLAN strip)"),
    _helper(PROG_TYPE_SCHED_CLS, "ringbuf_output", "5.8"),
    _helper(PROG_TYPE_SCHED_CLS, "ringbuf_reserve", "5.8"),
    _helper(PROG_TYPE_SCHED_CLS, "ringbuf_submit", "5.8"),
    _helper(PROG_TYPE_SCHED_CLS, "ktime_get_boot_ns", "5.8", macro="HAVE_KTIME_GET_BOOT_NS",
            fallback="records are stamped with bpf_ktime_get_ns (monotonic: stops while the host is suspended)",
            doc="record time stamps on the boot clock"),
    Feature("map_batch_ops", "batch", (), "5.6", macro=None,
            fallback="list maps are written and read one element per system call (slower for big lists)",
            doc="BPF_MAP_*_BATCH on LPM tries"),
    Feature("btf_vmlinux", "file", ("/sys/kernel/btf/vmlinux",), "5.4", fallback=REPORTED_ONLY,
            doc="kernel BTF (reported; BCC compiles against headers)"),
    Feature("bpf_stats", "file", ("/proc/sys/kernel/bpf_stats_enabled",), "5.1", fallback=REPORTED_ONLY,
            doc="per-program run time statistics (kernel.bpf_stats_enabled)"),
    Feature("xdp_live_frames", "live_frames", (), "5.18", fallback="the benchmarks' traffic generator uses AF_PACKET",
            doc="BPF_PROG_TEST_RUN in XDP live-frames mode (traffic generation)"),
]
FEATURES_BY_NAME = dict((feature.name, feature) for feature in FEATURES)

# Instruction encodings (include/uapi/linux/bpf_common.h, bpf.h).
_MOV64_IMM = 0xb7
_CALL = 0x85
_EXIT = 0x95
_XDP_PASS = 2


def _return(value):
    return [(_MOV64_IMM, 0, 0, value), (_EXIT, 0, 0, 0)]


def _load(prog_type, insns):
    """(loaded, verifier log)."""
    try:
        fd, log = bpf.prog_load(prog_type, insns)
    except bpf.BpfError as error:
        return False, getattr(error, "verifier_log", "") or str(error), error.errno
    bpf.close_fd(fd)
    return True, log, 0


def _probe_prog_type(prog_type):
    loaded, log, err = _load(prog_type, _return(0))
    return loaded, "" if loaded else (log.strip().splitlines() or [os.strerror(err)])[-1]


def _probe_helper(prog_type, helper_id):
    # r1 keeps the context the program was entered with; the arguments are not right for most
    # helpers, which is fine: only the refusal of the helper itself means "not available".
    loaded, log, err = _load(prog_type, [(_CALL, 0, 0, helper_id)] + _return(0))
    if loaded:
        return True, ""
    if err == errno.EPERM:
        return False, "no permission to load programs (run as root)"
    for line in log.splitlines():
        if any(words in line for words in _HELPER_REFUSALS):
            return False, line.strip()
    return True, ""


def _probe_map_type(map_type, key_size, value_size, max_entries, flags):
    try:
        fd = bpf.map_create(map_type, key_size, value_size, max_entries, flags, name="bpfleet_probe")
    except bpf.BpfError as error:
        return False, str(error)
    bpf.close_fd(fd)
    return True, ""


def _probe_batch():
    try:
        fd = bpf.map_create(bpf.MAP_TYPE_LPM_TRIE, 8, 4, 4, bpf.BPF_F_NO_PREALLOC, name="bpfleet_probe")
    except bpf.BpfError as error:
        return False, str(error)
    try:
        attr_keys = [b"\x20\x00\x00\x00\xc0\x00\x02\x01"]
        try:
            bpf.map_update_batch_strict(fd, attr_keys, [b"\x01\x00\x00\x00"])
        except bpf.BpfError as error:
            return False, str(error)
        return True, ""
    finally:
        bpf.close_fd(fd)


def _probe_file(path):
    return (True, "") if os.path.exists(path) else (False, "%s does not exist" % path)


def _probe_live_frames():
    try:
        fd, _log = bpf.prog_load(PROG_TYPE_XDP, _return(_XDP_PASS))
    except bpf.BpfError as error:
        return False, "cannot load an XDP program: %s" % (getattr(error, "verifier_log", "") or error)
    frame = b"\xff" * 12 + b"\x08\x00" + b"\x00" * 50
    try:
        # Kernels before 5.18 ignore the flags of an XDP test run: a flag no kernel knows must
        # be refused first, or "accepted" would mean nothing (5.10 accepted live frames so).
        try:
            bpf.prog_test_run_flags(fd, frame, _UNKNOWN_TEST_RUN_FLAG, repeat=1)
        except bpf.BpfError:
            pass
        else:
            return False, "this kernel ignores BPF_PROG_TEST_RUN flags for XDP programs (before 5.18)"
        bpf.prog_test_run_flags(fd, frame, BPF_F_TEST_XDP_LIVE_FRAMES, repeat=1)
        return True, ""
    except bpf.BpfError as error:
        return False, str(error)
    finally:
        bpf.close_fd(fd)


PROBES_BY_KIND = _PROBES = {
    "prog_type": _probe_prog_type,
    "helper": _probe_helper,
    "map_type": _probe_map_type,
    "batch": _probe_batch,
    "file": _probe_file,
    "live_frames": _probe_live_frames,
}


def kernel_identity():
    """What a cached probe result is valid for: the kernel build and this boot."""
    uname = platform.uname()
    try:
        with open(BOOT_ID) as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = ""
    return {"release": uname.release, "version": uname.version, "machine": uname.machine,
            "boot_id": boot_id, "probe_version": PROBE_VERSION}


def probe_all():
    """Ask the kernel about every feature: {name: {"available": bool, "reason": str}}."""
    results = {}
    for feature in FEATURES:
        available, reason = _PROBES[feature.kind](*feature.probe_args)
        results[feature.name] = {"available": bool(available), "reason": reason}
    return results


def _read_cache(identity):
    try:
        with open(FEATURES_CACHE) as handle:
            cached = json.load(handle)
    except (OSError, ValueError):
        return None
    if cached.get("identity") != identity or set(cached.get("features", {})) != set(FEATURES_BY_NAME):
        return None
    return cached["features"]


def _write_cache(identity, features):
    directory = os.path.dirname(FEATURES_CACHE)
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o750)
        tmp = "%s.%d.tmp" % (FEATURES_CACHE, os.getpid())
        with open(tmp, "w") as handle:
            json.dump({"identity": identity, "features": features}, handle, indent=1, sort_keys=True)
        os.rename(tmp, FEATURES_CACHE)
    except OSError:
        pass  # a cache that cannot be written only costs a probe next time


def probe(use_cache=True, write_cache=True):
    """(features, from_cache): probe results for this kernel, from the cache when valid.
    Check mode passes write_cache=False: it may ask the kernel, it leaves no file behind."""
    identity = kernel_identity()
    if use_cache:
        cached = _read_cache(identity)
        if cached is not None:
            return cached, True
    features = probe_all()
    if write_cache:
        _write_cache(identity, features)
    return features, False


# Where distributions' python3-bpfcc keeps its version: read as text, so neither the facts nor
# a refusal needs to load BCC (LLVM, about 200 MB).
BCC_VERSION_FILES = ("/usr/lib/python3/dist-packages/bcc/version.py",)
# BPF_TABLE_PINNED with map flags (the LPM tries need BPF_F_NO_PREALLOC) and creation of a
# pinned table that does not exist yet came with BCC 0.24 (iovisor/bcc#3837, #3382); Debian
# 11's 0.18 fails to compile the program (docs/compatibility.md).
MIN_BCC_VERSION = (0, 24)


def bcc_version():
    """The installed BCC's version text ("0.26.0"), or None when it cannot be told."""
    for path in BCC_VERSION_FILES:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    return None


def bcc_too_old(version):
    """A message when `version` is older than MIN_BCC_VERSION, else None (unknown: None)."""
    try:
        parts = tuple(int(part) for part in (version or "").split(".")[:2])
    except ValueError:
        return None
    if len(parts) < 2 or parts >= MIN_BCC_VERSION:
        return None
    return ("BCC %s is older than %d.%d, the oldest that compiles bpfleet's programs (pinned tables with map "
            "flags, created when missing); Debian 12 and newer have it" % ((version,) + MIN_BCC_VERSION))


class MaskError(ValueError):
    pass


def apply_mask(features, mask):
    """The features with those named in `mask` switched off (the test switch that makes a host
    behave as a kernel without them). Only optional features can be masked."""
    masked = dict((name, dict(result)) for name, result in features.items())
    for name in mask or []:
        feature = FEATURES_BY_NAME.get(name)
        if feature is None:
            raise MaskError("mask_features: unknown feature %r (known: %s)" % (
                name, ", ".join(sorted(f.name for f in FEATURES if not f.required))))
        if feature.required:
            raise MaskError("mask_features: %s is required (no fallback exists), it cannot be masked" % name)
        masked[name] = {"available": False, "reason": "masked by mask_features"}
    return masked


def missing_required(features):
    """Messages for the required features the kernel lacks (empty: this host can run bpfleet)."""
    problems = []
    for feature in FEATURES:
        result = features.get(feature.name) or {}
        if feature.required and not result.get("available"):
            problems.append("%s (%s; Linux %s or newer): %s" % (
                feature.name, feature.doc or feature.kind, feature.since, result.get("reason") or "not available"))
    return problems


def header(features):
    """The text of bpfleet_features.h: one HAVE_* macro per optional feature the C program
    adapts to. Deterministic for a feature set, so the program digest is too."""
    lines = ["/* bpfleet_features.h: generated on the host from its kernel's probed features",
             " * (plugins/module_utils/_features.py). The program's only source of HAVE_* macros. */",
             "#ifndef BPFLEET_FEATURES_H", "#define BPFLEET_FEATURES_H"]
    # A macro that several features share (a helper in both program types) is 1 only when
    # all of them are available: one program source serves both hooks.
    macros = {}
    for feature in FEATURES:
        if feature.macro:
            available = bool((features.get(feature.name) or {}).get("available"))
            macros[feature.macro] = macros.get(feature.macro, True) and available
    for macro in sorted(macros):
        lines.append("#define %s %d" % (macro, 1 if macros[macro] else 0))
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def header_digest(text):
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def fallbacks_in_use(features):
    """{feature: what the program does instead} for each optional feature that is missing."""
    used = {}
    for feature in FEATURES:
        if not feature.required and feature.fallback != REPORTED_ONLY and not (
                features.get(feature.name) or {}).get("available"):
            used[feature.name] = feature.fallback
    return used
