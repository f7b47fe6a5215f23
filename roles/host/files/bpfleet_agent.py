# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bpfleet-agent: drains the policies' ring buffers into JSON lines logs.

Installed by the bpfleet.core.host role as /usr/lib/bpfleet/agent/bpfleet_agent.py
next to copies of _contract.py, _bpf_syscall.py, _counters.py, _ringbuf.py, _records.py, _http.py,
_health.py, _safe_files.py (confined writes) and _privdrop.py (least privilege), which it imports
as sibling modules, and started through the launcher bpfleet-agent
beside it. Standard library only: no BCC, no LLVM.

  bpfleet-agent run      foreground worker (systemd Type=simple)
  bpfleet-agent start    daemon for hosts without systemd: a detached
                         supervisor that restarts the worker with backoff
  bpfleet-agent stop     stop the daemon (and a foreground worker)
  bpfleet-agent restart  stop, then start
  bpfleet-agent status   JSON on stdout; exit 0 running, 3 not running

Filtering never depends on this process: programs and maps are pinned and
attached by the policy module. If the agent stops, the kernel counts the
records it could not queue (stats slot records_lost).
"""

from __future__ import annotations

import argparse
import calendar
import ctypes
import errno
import fcntl
import json
import logging
import logging.handlers
import os
import select
import signal
import socket
import subprocess
import sys
import time

AGENT_VERSION = "0.1.0"
AGENT_PATH = os.path.realpath(__file__)
AGENT_DIR = os.path.dirname(AGENT_PATH)

# The installed layout has the module_utils copies next to this file; a
# source checkout (roles/host/files/) finds them in plugins/module_utils/.
sys.path.insert(0, AGENT_DIR)
_CHECKOUT_MODULE_UTILS = os.path.join(AGENT_DIR, "..", "..", "..", "plugins", "module_utils")
if not os.path.exists(os.path.join(AGENT_DIR, "_ringbuf.py")) and os.path.isdir(_CHECKOUT_MODULE_UTILS):
    sys.path.insert(1, os.path.normpath(_CHECKOUT_MODULE_UTILS))

import _bpf_syscall  # noqa: E402
import _contract  # noqa: E402
import _counters  # noqa: E402
import _health  # noqa: E402
import _privdrop  # noqa: E402
import _records  # noqa: E402
import _ringbuf  # noqa: E402
import _safe_files  # noqa: E402

DEFAULT_STATE_DIR = _contract.STATE_ROOT
DEFAULT_PIN_ROOT = _contract.PIN_ROOT
DEFAULT_RUN_DIR = _contract.RUN_DIR
DEFAULT_AGENT_LOG = "/var/log/bpfleet/agent.log"
DEFAULT_RECORD_LOG = "/var/log/bpfleet/headers.jsonl"

STATUS_FILE = "agent-status.json"
PID_FILE = "agent.pid"              # supervisor pid, flock()ed while it runs
WORKER_LOCK_FILE = "agent.lock"     # flock()ed by the one worker allowed per host

EXIT_NOT_RUNNING = 3                # LSB "program is not running", for `status`
EXIT_LOCKED = 75                    # EX_TEMPFAIL: another worker holds the lock

# One batch reads at most this many bytes of the ring (about 11,000 L3/L4 records of
# 96 bytes): it bounds the memory of a batch and how long the kernel waits before the
# space is handed back. A batch is one write() and one cursor update.
SPAN_BYTES = 1 << 20
# Per policy and loop turn, so status writes and rescans keep their rhythm and
# one busy policy cannot starve the others.
TURN_BYTES = 8 * SPAN_BYTES
# A stopping agent drains what is queued, but not forever if the producer
# keeps going.
FINAL_DRAIN_BYTES = 256 * SPAN_BYTES

CURSOR_DIR = "cursors"              # under the run directory, one file per policy
CURSOR_SIZE = 512                   # fixed: each update is one pwrite() of the whole record
TEXTFILE_NAME = "bpfleet.prom"
DEFAULT_CONFIG = "/etc/bpfleet/agent.json"
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

WORKER_LOCK_WAIT_S = 5.0
STOP_TIMEOUT_S = 20.0
WORKER_KILL_TIMEOUT_S = 10          # SIGTERM -> SIGKILL escalation by the supervisor
START_READY_TIMEOUT_S = 10.0
RESTART_BACKOFF_MAX_S = 60.0
RESTART_BACKOFF_RESET_S = 60.0      # a worker that lived this long starts a fresh backoff

PR_SET_PDEATHSIG = 1

log = logging.getLogger("bpfleet-agent")


def now_rfc3339():
    return _records.format_timestamp_ns(time.time_ns())


def parse_size(value):
    """Bytes from 1048576, "100M", "1G", "512k"; None for empty values."""
    if value in (None, "", 0):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().rstrip("B")
    multiplier = 1
    for suffix, factor in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if text.endswith(suffix):
            text, multiplier = text[:-1], factor
            break
    return int(float(text) * multiplier)


# --- output files ------------------------------------------------------------

class LogSink(object):
    """An append-only JSON lines file, written with one write() per batch.

    O_APPEND keeps the lines of several policies sharing a file whole. Rotation
    by others (logrotate) is followed on SIGHUP and on every rescan by comparing
    inodes; when the policy sets ``max_size``, the agent rotates by itself
    (file -> file.1 -> ... -> file.<keep>).
    """

    def __init__(self, path, max_size=None, keep=5, allowed_dirs=None):
        self.path = path
        self.name = os.path.basename(path)
        self.allowed_dirs = allowed_dirs
        self.max_size = max_size
        self.keep = max(1, int(keep or 1))
        self.fd = None
        self.dir_fd = None
        self.identity = None
        self.size = 0

    def open(self):
        # Confined (docs/security.md): beneath an allowed directory, no symlink followed,
        # a regular file with one link, created 0640. A refusal is an OSError (UnsafePath):
        # the batch is counted lost and the error shows in the status.
        self.close()
        fd, dir_fd = _safe_files.open_beneath(self.path, self.allowed_dirs, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        stat = os.fstat(fd)
        self.fd, self.dir_fd, self.identity, self.size = fd, dir_fd, (stat.st_dev, stat.st_ino), stat.st_size

    def _parent(self):
        """The directory fd of the log file (opened without following links), or None."""
        if self.dir_fd is None:
            try:
                root, parts = _safe_files.check_path(self.path, self.allowed_dirs)
                self.dir_fd = _safe_files.open_parent(root, parts, create=False)
            except OSError:
                return None
        return self.dir_fd

    def _lstat(self, name):
        parent = self._parent()
        if parent is None:
            raise FileNotFoundError(errno.ENOENT, "no parent directory", self.path)
        return os.stat(name, dir_fd=parent, follow_symlinks=False)

    def write(self, data):
        if self.fd is None:
            self.open()
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        # With O_APPEND the offset after a write is the file's end: the true size even when
        # logrotate's copytruncate emptied the file under us.
        self.size = os.lseek(self.fd, 0, os.SEEK_CUR)
        if self.max_size and self.size >= self.max_size:
            self.rotate()

    def rotate(self):
        # The closed file is complete on disk before its name changes: a crash or power
        # loss right after rotation cannot leave a rotated file with a hole at its end.
        if self.fd is not None:
            os.fsync(self.fd)
        parent = self._parent()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        if parent is not None:
            # Renames inside the log directory's fd: never through a symlinked directory.
            for index in range(self.keep - 1, 0, -1):
                older = "%s.%d" % (self.name, index)
                try:
                    os.replace(older, "%s.%d" % (self.name, index + 1), src_dir_fd=parent, dst_dir_fd=parent)
                except FileNotFoundError:
                    pass
            try:
                os.replace(self.name, self.name + ".1", src_dir_fd=parent, dst_dir_fd=parent)
            except FileNotFoundError:
                pass
        self.open()

    def reopen(self):
        self.close()
        self.open()

    def current_size(self):
        """The file's size now (other writers, logrotate copytruncate included)."""
        if self.fd is None:
            self.open()
        return os.fstat(self.fd).st_size

    def candidates(self):
        """The live file and the rotated ones, newest first."""
        return [self.path] + ["%s.%d" % (self.path, index) for index in range(1, self.keep + 1)]

    def find(self, identity):
        """(path, size) of the file with ``identity`` (dev, inode) among candidates()."""
        for path in self.candidates():
            try:
                stat = self._lstat(os.path.basename(path))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) == tuple(identity):
                return path, stat.st_size
        return None, None

    def truncate(self, path, size):
        """Cut the file `path` (one of candidates()) at `size`, without following a link."""
        parent = self._parent()
        if parent is None:
            raise FileNotFoundError(errno.ENOENT, "no parent directory", path)
        fd = _safe_files.open_at(parent, os.path.basename(path), os.O_WRONLY, display=path)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def reopen_if_moved(self):
        if self.fd is None:
            return
        try:
            stat = self._lstat(self.name)
        except FileNotFoundError:
            self.reopen()
            return
        if (stat.st_dev, stat.st_ino) != self.identity:
            self.reopen()

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        if self.dir_fd is not None:
            fd, self.dir_fd = self.dir_fd, None
            os.close(fd)


def write_json_atomically(path, document, mode=0o640):
    """Write then rename inside the file's directory (opened once; the temporary file is
    created O_EXCL|O_NOFOLLOW, so a planted symlink is never written through)."""
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    _safe_files.write_atomic_in(os.path.dirname(path), os.path.basename(path), data, mode)


def write_text_atomically(path, text):
    """Write then rename: node_exporter's textfile collector must never read half a file.
    0644: readable by node_exporter's own user whatever the agent's umask (0027)."""
    _safe_files.write_atomic_in(os.path.dirname(path), os.path.basename(path), text.encode("utf-8"), 0o644,
                                create=False)


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# name, type, help: the metrics of the textfile (docs/logging.md).
METRICS = (
    ("bpfleet_agent_info", "gauge", "bpfleet-agent version and host (value 1)."),
    ("bpfleet_agent_start_time_seconds", "gauge", "Start time of the bpfleet-agent worker, UNIX seconds."),
    ("bpfleet_agent_status_time_seconds", "gauge", "When bpfleet-agent wrote this file, UNIX seconds."),
    ("bpfleet_records_total", "counter", "Header records written to the policy's log file by this worker."),
    ("bpfleet_records_emitted_total", "counter",
     "Header records the kernel put into the policy's ring buffer (since the map was created)."),
    ("bpfleet_records_lost_total", "counter",
     "Header records lost: where=kernel ring buffer full (since the map was created), "
     "where=agent not written by this worker (write errors)."),
    ("bpfleet_records_malformed_total", "counter", "Ring buffer records of an unknown layout, skipped."),
    ("bpfleet_log_bytes_total", "counter", "Bytes written to the policy's log file by this worker."),
    ("bpfleet_last_record_timestamp_seconds", "gauge", "Time of the last record written, UNIX seconds."),
    ("bpfleet_policy_logging", "gauge", "1 when the agent reads the policy's ring buffer, 0 otherwise."),
    ("bpfleet_packets_total", "counter", "Packets by the filter rule that decided them, per interface."),
    ("bpfleet_bytes_total", "counter", "Bytes by the filter rule that decided them, per interface."),
    ("bpfleet_health", "gauge",
     "Health of the policy's logging as the agent sees it (docs/facts.md): 0 healthy, 1 degraded, 2 unhealthy. "
     "Attachment drift is in the facts only; a stale file means a stuck agent (bpfleet_agent_status_time_seconds)."),
    ("bpfleet_host_health", "gauge",
     "Worst bpfleet_health of the host's policies: 0 healthy, 1 degraded, 2 unhealthy."),
    ("bpfleet_health_problem", "gauge", "A problem of the health model (value 1), by code and severity."),
    ("bpfleet_health_window_seconds", "gauge", "The window the health model judges loss and errors over."),
    ("bpfleet_window_records_lost", "gauge",
     "Header records lost within the health window: where=kernel (ring buffer full), where=agent (not written)."),
    ("bpfleet_window_records", "gauge",
     "Header records within the health window: where=kernel offered to the ring buffer, where=agent handled."),
    ("bpfleet_log_filesystem_avail_bytes", "gauge", "Bytes available to the agent on the file system of the log."),
    ("bpfleet_log_filesystem_size_bytes", "gauge", "Size of the file system of the log."),
)


def _rfc3339_seconds(text):
    if not text:
        return None
    try:
        whole = time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(whole) + float("0" + text[19:].rstrip("Z"))


def prometheus_text(agent, updated_ns):
    """The node_exporter textfile: every metric with HELP and TYPE once, samples sorted."""
    samples = dict((name, []) for name, _kind, _help in METRICS)
    samples["bpfleet_agent_info"].append(('version="%s",host="%s"' % (_label(AGENT_VERSION), _label(agent.host)), 1))
    started = _rfc3339_seconds(agent.started_at)
    if started is not None:
        samples["bpfleet_agent_start_time_seconds"].append(("", "%.3f" % started))
    samples["bpfleet_agent_status_time_seconds"].append(("", "%.3f" % (updated_ns / 1e9)))
    for policy in sorted(agent.policies.values(), key=lambda item: item.name):
        label = 'policy="%s"' % _label(policy.name)
        samples["bpfleet_policy_logging"].append((label, 1 if policy.state() == "running" else 0))
        samples["bpfleet_records_total"].append((label, policy.records_written))
        samples["bpfleet_log_bytes_total"].append((label, policy.bytes_written))
        samples["bpfleet_records_malformed_total"].append((label, policy.records_malformed))
        if policy.records_emitted_kernel is not None:
            samples["bpfleet_records_emitted_total"].append((label, policy.records_emitted_kernel))
            samples["bpfleet_records_lost_total"].append((label + ',where="kernel"', policy.records_lost_kernel))
        samples["bpfleet_records_lost_total"].append((label + ',where="agent"', policy.records_lost_user))
        last = _rfc3339_seconds(policy.last_record_time)
        if last is not None:
            samples["bpfleet_last_record_timestamp_seconds"].append((label, "%.3f" % last))
        health = getattr(agent, "health", {}).get(policy.name)
        if health is not None:
            samples["bpfleet_health"].append((label, _health.severity_value(health["status"])))
            for item in health["problems"]:
                samples["bpfleet_health_problem"].append(
                    (label + ',code="%s",severity="%s"' % (_label(item["code"]), _label(item["severity"])), 1))
            loss = health.get("loss")
            if loss:
                if loss["kernel"]["known"]:
                    samples["bpfleet_window_records_lost"].append((label + ',where="kernel"', loss["kernel"]["lost"]))
                    samples["bpfleet_window_records"].append((label + ',where="kernel"', loss["kernel"]["offered"]))
                if loss["user"]["known"]:
                    samples["bpfleet_window_records_lost"].append((label + ',where="agent"', loss["user"]["lost"]))
                    samples["bpfleet_window_records"].append((label + ',where="agent"', loss["user"]["handled"]))
        if getattr(policy, "disk", None):
            path_label = label + ',path="%s"' % _label(policy.disk["path"])
            samples["bpfleet_log_filesystem_avail_bytes"].append((path_label, policy.disk["avail_bytes"]))
            samples["bpfleet_log_filesystem_size_bytes"].append((path_label, policy.disk["size_bytes"]))
        for (ifindex, rule_id), (packets, byte_count) in sorted(policy.rule_counters.items()):
            rule = policy.rules.get(str(rule_id), str(rule_id))
            labels = '%s,iface="%s",rule="%s",action="%s"' % (
                label, _label(agent.interface_names[ifindex]), _label(rule),
                _label(policy.rule_actions.get(rule, "unknown")))
            samples["bpfleet_packets_total"].append((labels, packets))
            samples["bpfleet_bytes_total"].append((labels, byte_count))
    if getattr(agent, "host_health", None) is not None:
        samples["bpfleet_host_health"].append(("", _health.severity_value(agent.host_health["status"])))
        samples["bpfleet_health_window_seconds"].append(("", "%g" % agent.health_window))
    out = []
    for name, kind, help_text in METRICS:
        if not samples[name]:
            continue
        out.append("# HELP %s %s\n# TYPE %s %s\n" % (name, help_text, name, kind))
        for labels, value in samples[name]:
            out.append("%s{%s} %s\n" % (name, labels, value) if labels else "%s %s\n" % (name, value))
    return "".join(out)


class SyslogSink(object):
    """Optional copy of the records to syslog (/dev/log; journald listens there too), one
    datagram per record. Costs a system call a record: for modest rates, not floods."""

    FACILITIES = {"user": 1, "daemon": 3, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
                  "local4": 20, "local5": 21, "local6": 22, "local7": 23}

    def __init__(self, address, facility, policies, tag):
        self.address = address
        self.priority = self.FACILITIES[facility] * 8 + 6          # severity: info
        self.policies = set(policies) if policies else None
        self.prefix = ("<%d>%s: " % (self.priority, tag)).encode("ascii")
        self.socket = None
        self.dropped = 0

    @classmethod
    def from_config(cls, config):
        if config is True:
            config = {}
        facility = config.get("facility", "local0")
        if facility not in cls.FACILITIES:
            raise ValueError("syslog.facility %r: one of %s" % (facility, ", ".join(sorted(cls.FACILITIES))))
        return cls(config.get("address", "/dev/log"), facility, config.get("policies"),
                   config.get("tag", "bpfleet"))

    def wants(self, policy_name):
        return self.policies is None or policy_name in self.policies

    def send(self, lines):
        if self.socket is None:
            try:
                self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.socket.connect(self.address)
                self.socket.setblocking(False)
            except OSError:
                self.socket = None
                self.dropped += len(lines)
                return
        prefix = self.prefix
        for line in lines:
            try:
                self.socket.send(prefix + line.encode("ascii"))
            except OSError:
                # A full syslog queue must not stall the file log: count and go on.
                self.dropped += 1


class InterfaceNames(dict):
    """ifindex -> name, resolved on first use; cleared on every rescan because
    interfaces come and go and indexes get reused."""

    def __missing__(self, ifindex):
        try:
            name = socket.if_indextoname(ifindex)
        except OSError:
            name = str(ifindex)
        self[ifindex] = name
        return name


class Cursor(object):
    """Write-ahead record of the batch in flight, so kill -9 neither loses nor duplicates.

    Before a batch is written, the cursor stores the ring positions it covers
    (``start``, ``end``), the output file's identity and its size before and after the
    write; the batch's ring space is released only after the write. After a crash the
    ring's consumer position tells whether the last batch was released: if it still
    stands at ``start``, the file decides (recover()). The cursor lives on tmpfs
    (/run/bpfleet/cursors) without fsync: it must survive the process, not a reboot, and
    a reboot loses the ring buffer anyway. One fixed-size pwrite() per batch, so a
    reader never sees half of an update.
    """

    def __init__(self, path):
        self.path = path
        self.fd = None

    def _open(self, flags):
        # The cursors directory and the cursor are opened without following a link.
        directory, name = os.path.split(self.path)
        parent, sub = os.path.split(directory)
        return _safe_files.open_in(parent, os.path.join(sub, name), flags, 0o640)

    def load(self):
        try:
            fd = self._open(os.O_RDONLY)
            with os.fdopen(fd, "rb") as cursor_file:
                document = json.loads(cursor_file.read().decode("ascii").strip() or "null")
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def begin(self, map_id, start, end, identity, size_before, size_after):
        if self.fd is None:
            self.fd = self._open(os.O_RDWR | os.O_CREAT)
        document = json.dumps({"map_id": map_id, "start": start, "end": end, "dev": identity[0],
                               "ino": identity[1], "size_before": size_before, "size_after": size_after},
                              sort_keys=True, separators=(",", ":")).encode("ascii")
        os.pwrite(self.fd, document.ljust(CURSOR_SIZE - 1) + b"\n", 0)

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def recovery_action(cursor, map_id, consumer_position, found_size):
    """What to do with the batch a dead agent left in flight (pure; unit tested).

    ``cursor``: Cursor.load(); ``consumer_position``: the ring's now; ``found_size``:
    the size of the file with the cursor's identity (None when it is gone). Returns
    ("none", None) when there is nothing to repair, ("skip", end) when the batch is in
    the file (release up to ``end``, do not write it again), ("truncate", size_before)
    when the file holds part of it (cut the partial lines, then read the batch again),
    ("reread", None) when none of it is in the file.
    """
    if not cursor or cursor.get("map_id") != map_id:
        return "none", None
    start, end = cursor.get("start"), cursor.get("end")
    if consumer_position != start or not isinstance(end, int) or end <= start:
        return "none", None              # the batch was released: no crash window open
    if found_size is None:
        # The file was moved away or deleted: writing the batch again risks a duplicate,
        # skipping it risks a loss; a missing file is what an operator's cleanup leaves,
        # so the batch is read again into the new file.
        return "reread", None
    if found_size >= cursor["size_after"]:
        return "skip", end
    if found_size > cursor["size_before"]:
        return "truncate", cursor["size_before"]
    return "reread", None


class Failpoints(object):
    """Test hooks: BPFLEET_AGENT_FAILPOINT=name[:n] kills the worker with SIGKILL the
    n-th time (default 1st) it passes `name`: after-cursor, mid-write, after-write,
    after-release. Unset, a point costs one attribute test."""

    def __init__(self, spec):
        self.name, self.remaining = None, 0
        if spec:
            name, _sep, count = spec.partition(":")
            self.name, self.remaining = name, int(count or 1)

    def hit(self, name):
        if self.name == name:
            self.remaining -= 1
            if self.remaining <= 0:
                log.warning("failpoint %s: SIGKILL", name)
                os.kill(os.getpid(), signal.SIGKILL)


def read_kernel_counters(stats_fd):
    """(records emitted, records lost) from a policy's pinned `stats` per-CPU array."""
    return (_counters.read_slot(stats_fd, _counters.STAT_RECORDS_EMITTED)[0],
            _counters.read_slot(stats_fd, _counters.STAT_RECORDS_LOST)[0])


# --- one policy ----------------------------------------------------------------

class PolicyLog(object):
    """A policy found in <state-dir>/<key>/state.json: its decoder, ring buffer,
    output file and counters. Counters survive reloads and ring buffer
    replacements; they start at zero with the worker (the kernel's count from
    the map's creation)."""

    def __init__(self, key, state_path):
        self.key = key
        self.state_path = state_path
        self.name = key
        self.signature = None
        self.decoder = None
        self.encoder = None
        self.sink = None
        self.ring = None
        self.ring_pin = None
        self.cursor = None
        self.logging_enabled = False
        self.rules = {}
        self.rule_actions = {}
        self.records_written = 0
        self.bytes_written = 0
        self.records_lost_user = 0
        self.records_malformed = 0
        self.records_recovered = 0
        self.records_emitted_kernel = None
        self.records_lost_kernel = None
        self.rule_counters = {}
        self.last_record_time = None
        self.error = None
        self.error_at = None            # UNIX time the error last happened (the health window)
        self.samples = []               # counter history for the health model (Agent.sample)
        self.disk = None
        self.stats_map_id = None        # identity of the kernel's counters (a new map restarts them)
        self.sink_refused = None        # why the host refused log.sink.file (docs/security.md)

    def state(self):
        if not self.logging_enabled:
            return "disabled"
        if self.error or self.sink_refused:
            return "error"
        return "running" if self.ring is not None else "waiting"

    def status(self):
        return {
            "state": self.state(),
            "file": self.sink.path if self.sink else None,
            "map_id": self.ring.map_id if self.ring else None,
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
            "records_lost_user": self.records_lost_user,
            "records_lost_kernel": self.records_lost_kernel,
            "records_emitted": self.records_emitted_kernel,
            "records_malformed": self.records_malformed,
            "records_recovered": self.records_recovered,
            "last_record_time": self.last_record_time,
            "error": self.sink_refused or self.error,
            "error_at_unix": self.error_at,
            "disk": self.disk,
            "samples": self.samples,
        }

    def sample(self, now, pid):
        """The counters now, as the health model reads them (_health.window_loss)."""
        return {"t": round(now, 3), "pid": pid, "map": self.stats_map_id,
                "emitted": self.records_emitted_kernel, "lost_kernel": self.records_lost_kernel,
                "written": self.records_written, "lost_user": self.records_lost_user}


# --- the worker --------------------------------------------------------------------

class Agent(object):
    def __init__(self, options):
        self.state_dir = options.state_dir
        self.pin_root = options.pin_root
        self.run_dir = options.run_dir
        self.agent_log = options.agent_log
        self.poll_interval = options.poll_interval
        self.rescan_interval = options.rescan_interval
        self.status_interval = options.status_interval
        self.health_window = float(options.health_window)
        self.health_sample_interval = float(options.health_sample_interval)
        self.health_limits = _health.thresholds({"window_s": self.health_window,
                                                 "sample_interval_s": self.health_sample_interval})
        self.health = {}
        self.host_health = None
        self.previous_samples = {}
        self.supervised = options.supervised
        self.status_path = os.path.join(self.run_dir, STATUS_FILE)
        self.textfile_dir = options.textfile_dir
        self.sink_dirs = _safe_files.normalize_dirs(options.sink_dirs)
        self.syslog = SyslogSink.from_config(options.syslog) if options.syslog else None
        self.failpoints = Failpoints(os.environ.get("BPFLEET_AGENT_FAILPOINT"))
        self.capabilities = capabilities_now()
        self.policies = {}
        self.interface_names = InterfaceNames()
        self.host = socket.gethostname()
        self.started_at = now_rfc3339()
        self.encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)
        self.poller = select.epoll()
        self.stopping = False
        self.reopen_requested = False

    # signals: the handlers only set flags; the loop acts within poll_interval.

    def _on_stop_signal(self, signum, frame):
        self.stopping = True

    def _on_hangup(self, signum, frame):
        self.reopen_requested = True

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)

    # discovery

    def rescan(self):
        host = socket.gethostname()
        if host != self.host:
            self.host = host
            for policy in self.policies.values():
                if policy.decoder is not None:
                    policy.decoder.host = host
        self.interface_names.clear()
        for policy in self.policies.values():
            if policy.encoder is not None:
                policy.encoder.reset()      # its fragments hold interface names
        found = set()
        try:
            entries = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            entries = []
        for key in entries:
            state_path = os.path.join(self.state_dir, key, "state.json")
            try:
                stat = os.stat(state_path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.add(key)
            policy = self.policies.get(key)
            if policy is None:
                policy = self.policies[key] = PolicyLog(key, state_path)
                log.info("policy %s: found %s", key, state_path)
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature != policy.signature:
                self.load_state(policy, signature)
            if policy.logging_enabled:
                self.follow_ring(policy)
            if policy.sink is not None:
                try:
                    policy.sink.reopen_if_moved()
                except OSError as error:
                    self.set_error(policy, "cannot reopen %s: %s" % (policy.sink.path, error))
        for key in sorted(set(self.policies) - found):
            log.info("policy %s: state.json is gone, closing", key)
            self.forget(self.policies.pop(key))

    def load_state(self, policy, signature):
        try:
            with open(policy.state_path, "rb") as state_file:
                state = json.loads(state_file.read().decode("utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            # Possibly caught mid-write: keep the previous configuration and
            # retry at the next rescan (signature left unchanged).
            self.set_error(policy, "cannot read %s: %s" % (policy.state_path, error))
            return
        policy.signature = signature
        policy.name = str(state.get("name") or policy.key)
        log_config = state.get("log")
        if not isinstance(log_config, dict) or log_config.get("enabled") is False:
            if policy.logging_enabled:
                log.info("policy %s: logging disabled", policy.key)
            self.drain_policy(policy, FINAL_DRAIN_BYTES)
            self.close_ring(policy)
            self.close_sink(policy)
            policy.logging_enabled = False
            policy.decoder = policy.encoder = None
            policy.error = None
            return
        sink_config = log_config.get("sink") if isinstance(log_config.get("sink"), dict) else {}
        path = log_config.get("file") or sink_config.get("file") or DEFAULT_RECORD_LOG
        max_size = parse_size(log_config.get("max_size", sink_config.get("max_size")))
        keep = log_config.get("keep", sink_config.get("keep", 5))
        decoder = _records.RecordDecoder(
            fields=log_config.get("fields") or (),
            host=self.host,
            rule_names=state.get("rules") or {},
            iface_names=self.interface_names,
            http=log_config.get("http"),
        )
        if decoder.unknown_fields:
            log.warning("policy %s: ignoring unknown log fields %s", policy.key, ", ".join(decoder.unknown_fields))
        # Records already queued were produced under the old configuration,
        # but the ring buffer does not say which; they are written with the new one.
        if policy.sink is None or policy.sink.path != path:
            self.close_sink(policy)
            policy.sink = LogSink(path, max_size, keep, self.sink_dirs)
        else:
            policy.sink.max_size, policy.sink.keep = max_size, max(1, int(keep or 1))
        policy.decoder = decoder
        policy.encoder = _records.LineEncoder(decoder)
        policy.rules = dict((str(rule_id), str(name)) for rule_id, name in (state.get("rules") or {}).items())
        policy.rule_actions = dict((str(detail.get("name")), str(detail.get("action")))
                                   for detail in state.get("rule_details") or [] if isinstance(detail, dict))
        if policy.cursor is None:
            policy.cursor = Cursor(os.path.join(self.run_dir, CURSOR_DIR, policy.key + ".cursor"))
        policy.logging_enabled = True
        policy.error = None
        policy.sink_refused = None
        try:
            # Checked again here, whatever the controller said (docs/security.md); records
            # are still drained from the ring, and counted lost instead of written.
            _safe_files.check_path(path, self.sink_dirs)
        except _safe_files.UnsafePath as error:
            policy.sink_refused = "log.sink.file %s refused: %s" % (path, error)
            log.error("policy %s: %s", policy.key, policy.sink_refused)
        log.info("policy %s: log to %s, fields %s", policy.key, path, ",".join(decoder.fields) or "(base only)")

    def follow_ring(self, policy):
        """Open the policy's ring buffer, or switch to a new one when a
        recompile pinned a different map (same path, other map id)."""
        pin = os.path.join(self.pin_root, policy.name, "maps", "events")
        try:
            fd = _bpf_syscall.obj_get(pin)
        except _bpf_syscall.BpfError as error:
            if policy.ring is not None and error.errno == errno.ENOENT:
                log.info("policy %s: ring buffer unpinned, closing map id %d", policy.key, policy.ring.map_id)
                self.drain_policy(policy, FINAL_DRAIN_BYTES)
                self.close_ring(policy)
            self.set_error(policy, str(error))
            return
        try:
            map_id = _bpf_syscall.map_info(fd)["id"]
            if policy.ring is not None and policy.ring.map_id == map_id and policy.ring_pin == pin:
                return
            ring = _ringbuf.RingBuffer(fd)
        except (OSError, ValueError) as error:
            self.set_error(policy, "%s: %s" % (pin, error))
            return
        finally:
            _bpf_syscall.close_fd(fd)
        if policy.ring is not None:
            log.info("policy %s: ring buffer replaced, map id %d -> %d", policy.key, policy.ring.map_id, map_id)
            self.drain_policy(policy, FINAL_DRAIN_BYTES)
            self.close_ring(policy)
        else:
            log.info("policy %s: reading %s (map id %d, %d bytes)", policy.key, pin, map_id, ring.size)
        policy.ring = ring
        policy.ring_pin = pin
        policy.error = None
        self.poller.register(ring.fileno(), select.EPOLLIN)
        self.recover(policy)

    def recover(self, policy):
        """Close the crash window a killed agent may have left on this ring (Cursor)."""
        if policy.cursor is None or policy.sink is None:
            return
        cursor = policy.cursor.load()
        found_path = found_size = None
        if cursor and "ino" in cursor:
            found_path, found_size = policy.sink.find((cursor["dev"], cursor["ino"]))
        action, value = recovery_action(cursor, policy.ring.map_id, policy.ring.consumer_position, found_size)
        if action == "skip":
            log.warning("policy %s: the last batch before a crash (ring %d-%d) is already in %s; not writing it again",
                        policy.key, cursor["start"], cursor["end"], found_path)
            policy.ring.release(value)
            policy.records_recovered += 1
        elif action == "truncate":
            log.warning("policy %s: %s ends with part of the batch in flight at a crash; cutting it at byte %d "
                        "and writing the batch again", policy.key, found_path, value)
            policy.sink.truncate(found_path, value)
        elif action == "reread":
            log.warning("policy %s: the batch in flight at a crash is not in %s; writing it again",
                        policy.key, policy.sink.path)

    def set_error(self, policy, message):
        if message != policy.error:
            log.warning("policy %s: %s", policy.key, message)
        policy.error = message
        policy.error_at = round(time.time(), 3)

    def close_ring(self, policy):
        if policy.ring is not None:
            try:
                self.poller.unregister(policy.ring.fileno())
            except (OSError, ValueError):
                pass
            policy.ring.close()
            policy.ring = None
            policy.ring_pin = None

    def close_sink(self, policy):
        if policy.sink is not None:
            policy.sink.close()
            policy.sink = None
        if policy.cursor is not None:
            policy.cursor.close()

    def forget(self, policy):
        self.drain_policy(policy, FINAL_DRAIN_BYTES)
        self.close_ring(policy)
        self.close_sink(policy)

    # the data path

    def drain_policy(self, policy, budget):
        """Write what the policy's ring holds, batch by batch, up to ``budget`` bytes of
        ring; returns the bytes consumed."""
        if policy.ring is None or policy.encoder is None:
            return 0
        total = 0
        while total < budget:
            consumed = self.drain_batch(policy)
            if not consumed:
                break
            total += consumed
        return total

    def drain_batch(self, policy):
        ring = policy.ring
        position, span = ring.peek(SPAN_BYTES)
        if not span:
            return 0
        offset = _records.boot_to_realtime_offset_ns()
        lines, consumed, malformed = policy.encoder.encode(span, offset)
        if not consumed:
            return 0
        check = ring.copy_at(position, consumed)
        if check != (span if consumed == len(span) else span[:consumed]):
            # A record was committed while the span was copied (see RingBuffer.copy_at).
            lines, consumed, malformed = policy.encoder.encode(check, offset)
        if malformed:
            if not policy.records_malformed:
                log.warning("policy %s: malformed records (wrong size or version), counting them", policy.key)
            policy.records_malformed += malformed
        end = position + consumed
        if lines:
            self.write_batch(policy, lines, position, end)
        else:
            ring.release(end)
        return consumed

    def write_batch(self, policy, lines, start, end):
        lines.append("")
        # JSON with ensure_ascii: pure ASCII, the cheapest conversion to bytes.
        data = "\n".join(lines).encode("ascii")
        count = len(lines) - 1
        sink = policy.sink
        failpoints = self.failpoints
        try:
            size_before = sink.current_size()
            policy.cursor.begin(policy.ring.map_id, start, end, sink.identity, size_before, size_before + len(data))
            failpoints.hit("after-cursor")
            if failpoints.name == "mid-write":
                if failpoints.remaining == 1:
                    sink.write(data[:len(data) // 2])
                failpoints.hit("mid-write")
            sink.write(data)
            failpoints.hit("after-write")
        except OSError as error:
            policy.records_lost_user += count
            self.set_error(policy, "cannot write %s: %s" % (sink.path, error))
            sink.close()          # reopened (and the error retried) with the next batch
            policy.ring.release(end)
            return
        policy.ring.release(end)
        failpoints.hit("after-release")
        if self.syslog is not None and self.syslog.wants(policy.name):
            self.syslog.send(lines[:-1])
        policy.records_written += count
        policy.bytes_written += len(data)
        policy.last_record_time = _records.LineEncoder.last_ts(lines[:-1])
        if policy.error and policy.error.startswith("cannot write"):
            policy.error = None

    def drain_all(self, budget):
        drained = 0
        for policy in list(self.policies.values()):
            drained = max(drained, self.drain_policy(policy, budget))
        return drained

    def reopen_files(self):
        self.reopen_requested = False
        if self.agent_log:
            redirect_stderr_to(self.agent_log)
        for policy in self.policies.values():
            if policy.sink is not None:
                try:
                    policy.sink.reopen()
                except OSError as error:
                    self.set_error(policy, "cannot reopen %s: %s" % (policy.sink.path, error))
        log.info("log files reopened (SIGHUP)")

    def read_kernel(self, policy):
        """Refresh the kernel's counters of a policy from its pinned maps (best effort: a
        policy without logging or being replaced may have none)."""
        maps_dir = os.path.join(self.pin_root, policy.name, "maps")
        try:
            with _bpf_syscall.fd_closing(_bpf_syscall.obj_get(os.path.join(maps_dir, "stats"))) as fd:
                policy.records_emitted_kernel, policy.records_lost_kernel = read_kernel_counters(fd)
                policy.stats_map_id = _bpf_syscall.map_info(fd)["id"]
        except (OSError, ValueError):
            pass
        try:
            with _bpf_syscall.fd_closing(_bpf_syscall.obj_get(os.path.join(maps_dir, "rule_stats"))) as fd:
                policy.rule_counters = _counters.read_rule_counters(fd)
        except (OSError, ValueError):
            policy.rule_counters = {}

    def load_previous_samples(self):
        """The counter history a previous worker left in the status file, so the health window
        spans agent restarts (the kernel's counters continue; the worker's restart)."""
        previous = read_status_file(self.run_dir) or {}
        for name, entry in (previous.get("policies") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("samples"), list):
                # The previous worker's last point ("current") is history now.
                self.previous_samples[name] = [dict((k, v) for k, v in point.items() if k != "current")
                                               for point in entry["samples"] if isinstance(point, dict)]

    def update_health(self, policy, now):
        """Add a point to the policy's counter history (every health_sample_interval; the last
        point is always the current one), then judge the policy with the health model."""
        if not policy.logging_enabled:
            policy.samples, policy.disk = [], None
            self.health.pop(policy.name, None)
            return
        if policy.name in self.previous_samples:
            policy.samples = self.previous_samples.pop(policy.name) + policy.samples
        current = policy.sample(now, os.getpid())
        history = policy.samples[:-1] if policy.samples and policy.samples[-1].get("current") else policy.samples
        if not history or now - history[-1]["t"] >= self.health_sample_interval:
            history.append(current)
        keep_from = now - self.health_window - 2 * self.health_sample_interval
        history = [point for point in history if point["t"] >= keep_from]
        policy.samples = history + [dict(current, current=True)]
        policy.disk = None
        if policy.sink is not None:
            directory = os.path.dirname(policy.sink.path) or "/"
            try:
                vfs = os.statvfs(directory)
                policy.disk = {"path": directory, "size_bytes": vfs.f_blocks * vfs.f_frsize,
                               "avail_bytes": vfs.f_bavail * vfs.f_frsize}
            except OSError:
                pass
        self.health[policy.name] = _health.policy_health(
            policy.name, now, log={"enabled": True, "error": policy.error, "error_at_unix": policy.error_at,
                                   "samples": policy.samples, "disk": policy.disk},
            limits=self.health_limits)

    def write_status(self):
        updated_ns = time.time_ns()
        policies = {}
        malformed = 0
        for policy in self.policies.values():
            self.read_kernel(policy)
            self.update_health(policy, updated_ns / 1e9)
            policies[policy.name] = policy.status()
            malformed += policy.records_malformed
        for name in set(self.health) - set(policies):
            del self.health[name]
        self.host_health = _health.host_health(self.health, {"state": "running"}, self.health_limits)
        document = {
            "pid": os.getpid(),
            "supervisor_pid": os.getppid() if self.supervised else None,
            "mode": "daemon" if self.supervised else "foreground",
            "version": AGENT_VERSION,
            "host": self.host,
            "started_at": self.started_at,
            "updated_at": _records.format_timestamp_ns(updated_ns),
            # For readers that compute the status age without parsing RFC 3339 (facts).
            "updated_at_unix": round(updated_ns / 1e9, 3),
            "records_malformed": malformed,
            "textfile": os.path.join(self.textfile_dir, TEXTFILE_NAME) if self.textfile_dir else None,
            "health": {"window_s": self.health_window, "sample_interval_s": self.health_sample_interval,
                       "status": self.host_health["status"], "messages": self.host_health["messages"]},
            "capabilities": self.capabilities,
            "policies": policies,
        }
        try:
            write_json_atomically(self.status_path, document)
        except OSError as error:
            log.warning("cannot write %s: %s", self.status_path, error)
        if self.textfile_dir:
            try:
                write_text_atomically(os.path.join(self.textfile_dir, TEXTFILE_NAME),
                                      prometheus_text(self, updated_ns))
            except OSError as error:
                if not getattr(self, "_textfile_warned", False):
                    log.warning("cannot write the Prometheus textfile in %s: %s", self.textfile_dir, error)
                    self._textfile_warned = True

    def run(self):
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        lock_fd = acquire_lock(os.path.join(self.run_dir, WORKER_LOCK_FILE), WORKER_LOCK_WAIT_S)
        if lock_fd is None:
            log.error("another bpfleet-agent worker holds %s; not starting a second one",
                      os.path.join(self.run_dir, WORKER_LOCK_FILE))
            return EXIT_LOCKED
        self.install_signal_handlers()
        self.load_previous_samples()
        log.info("bpfleet-agent %s started (pid %d, state %s, pins %s)",
                 AGENT_VERSION, os.getpid(), self.state_dir, self.pin_root)
        next_rescan = next_status = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now >= next_rescan:
                self.rescan()
                next_rescan = now + self.rescan_interval
            if self.reopen_requested:
                self.reopen_files()
            drained = self.drain_all(TURN_BYTES)
            if now >= next_status:
                self.write_status()
                next_status = now + self.status_interval
            if drained < TURN_BYTES:
                # The producer wakes us every N records; with BPF_RB_NO_WAKEUP
                # in between, the timeout is what picks up the rest.
                self.poller.poll(self.poll_interval)
        log.info("stopping: draining what is queued")
        for key in list(self.policies):
            self.forget(self.policies[key])
        self.write_status()
        log.info("stopped")
        os.close(lock_fd)
        return 0


# --- locks, pids, processes ------------------------------------------------------

def acquire_lock(path, wait_s=0.0):
    """An fd holding an exclusive flock on ``path``, or None when another process
    keeps it longer than ``wait_s``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.1)


def is_locked(path):
    """True when some process holds a flock on ``path`` (a running agent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)          # also drops our probe lock


def read_pid(path):
    try:
        with open(path) as pid_file:
            return int(pid_file.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_agent_process(pid):
    """The pid is alive and runs this agent (guards against pid reuse)."""
    if not pid:
        return False
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            return b"bpfleet_agent.py" in cmdline.read()
    except OSError:
        return False


def read_status_file(run_dir):
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as status_file:
            return json.load(status_file)
    except (OSError, ValueError):
        return None


def redirect_stderr_to(path):
    """Point fd 2 at ``path`` (append) so tracebacks land in the agent log."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    os.dup2(fd, 2)
    os.close(fd)


class NoFollowFileHandler(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler that never opens its file through a symlink."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


def setup_logging(agent_log):
    handler = (NoFollowFileHandler(agent_log) if agent_log
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s bpfleet-agent[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _set_parent_death_signal():
    # Runs in the worker between fork and exec: if the supervisor dies, even by
    # SIGKILL, the worker gets SIGTERM instead of running on unsupervised.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def path_options(options):
    extra = ["--config", options.config] if options.config else []
    for directory in options.sink_dirs or ():
        extra += ["--sink-dir", directory]
    if options.textfile_dir:
        extra += ["--textfile-dir", options.textfile_dir]
    return extra + ["--state-dir", options.state_dir, "--pin-root", options.pin_root,
                    "--run-dir", options.run_dir,
                    "--poll-interval", str(options.poll_interval),
                    "--rescan-interval", str(options.rescan_interval),
                    "--status-interval", str(options.status_interval),
                    "--health-window", str(options.health_window),
                    "--health-sample-interval", str(options.health_sample_interval)]


# --- daemon mode -----------------------------------------------------------------------

class Supervisor(object):
    """Runs in the detached grandchild of `start`: owns the pid file, keeps one
    worker running (restart with exponential backoff), forwards SIGTERM/SIGHUP."""

    def __init__(self, options, ready_fd):
        self.options = options
        self.ready_fd = ready_fd
        self.agent_log = options.agent_log or DEFAULT_AGENT_LOG
        self.pid_path = os.path.join(options.run_dir, PID_FILE)
        self.worker = None
        self.stopping = False

    def _on_stop_signal(self, signum, frame):
        self.stopping = True
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            signal.alarm(WORKER_KILL_TIMEOUT_S)

    def _on_alarm(self, signum, frame):
        if self.worker is not None and self.worker.poll() is None:
            log.warning("worker %d ignored SIGTERM for %d s, killing it", self.worker.pid, WORKER_KILL_TIMEOUT_S)
            self.worker.kill()

    def _on_hangup(self, signum, frame):
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGHUP)

    def report(self, message):
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, message.encode("utf-8") + b"\n")
            finally:
                os.close(self.ready_fd)
                self.ready_fd = None

    def spawn_worker(self):
        command = [sys.executable, AGENT_PATH, "run", "--supervised", "--agent-log", self.agent_log]
        command += path_options(self.options)
        log_fd = os.open(self.agent_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o640)
        try:
            self.worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                           close_fds=True, cwd="/", preexec_fn=_set_parent_death_signal)
        finally:
            os.close(log_fd)
        log.info("worker %d started", self.worker.pid)

    def wait_until_worker_ready(self):
        """True once the worker wrote its first status; False if it died first."""
        deadline = time.monotonic() + START_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                return False
            status = read_status_file(self.options.run_dir)
            if status and status.get("pid") == self.worker.pid:
                return True
            time.sleep(0.05)
        return self.worker.poll() is None

    def run(self):
        drop_privileges(self.options, "supervisor")
        pid_fd = acquire_lock(self.pid_path)
        if pid_fd is None:
            self.report("running %s" % (read_pid(self.pid_path) or "?"))
            return 0
        os.ftruncate(pid_fd, 0)
        os.write(pid_fd, b"%d\n" % os.getpid())
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        log.info("supervisor %d started (bpfleet-agent %s)", os.getpid(), AGENT_VERSION)
        try:
            self.spawn_worker()
            if not self.wait_until_worker_ready():
                code = self.worker.wait()
                self.report("failed worker exited with code %d at startup, see %s" % (code, self.agent_log))
                return 1
            self.report("started %d %d" % (os.getpid(), self.worker.pid))
            backoff = 1.0
            while True:
                started = time.monotonic()
                code = self.worker.wait()
                if self.stopping:
                    log.info("worker %d exited with code %d; supervisor stopping", self.worker.pid, code)
                    break
                lived = time.monotonic() - started
                if lived >= RESTART_BACKOFF_RESET_S:
                    backoff = 1.0
                log.warning("worker %d exited with code %d after %.1f s; restarting in %.0f s",
                            self.worker.pid, code, lived, backoff)
                self.sleep_unless_stopping(backoff)
                if self.stopping:
                    break
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                self.spawn_worker()
            return 0
        finally:
            signal.alarm(0)
            try:
                os.unlink(self.pid_path)
            except FileNotFoundError:
                pass
            os.close(pid_fd)
            log.info("supervisor %d stopped", os.getpid())

    def sleep_unless_stopping(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))


def supervisor_pid(run_dir):
    pid_path = os.path.join(run_dir, PID_FILE)
    if is_locked(pid_path):
        return read_pid(pid_path)
    return None


def worker_pid(run_dir):
    """The running worker's pid (from its status file), or None."""
    if not is_locked(os.path.join(run_dir, WORKER_LOCK_FILE)):
        return None
    status = read_status_file(run_dir) or {}
    pid = status.get("pid")
    return pid if is_agent_process(pid) else None


def detach_stdio_and_descriptors(keep_fd):
    """Leave the caller's session entirely: stdio to /dev/null and every other
    inherited descriptor closed, so an SSH session (or Ansible's pipes) sees
    EOF and returns at once."""
    null_fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null_fd, target)
    if null_fd > 2:
        os.close(null_fd)
    max_fd = min(os.sysconf("SC_OPEN_MAX"), 1 << 16)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, max_fd)


def command_start(options):
    run_dir = options.run_dir
    running_pid = supervisor_pid(run_dir)
    if running_pid:
        print(json.dumps({"changed": False, "running": True, "supervisor_pid": running_pid}))
        return 0
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    agent_log = options.agent_log or DEFAULT_AGENT_LOG
    os.makedirs(os.path.dirname(agent_log), mode=0o750, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    first_child = os.fork()
    if first_child == 0:
        code = 1
        try:
            os.close(read_fd)
            if write_fd <= 2:
                # stdio was closed by our caller: keep the pipe clear of 0-2,
                # which are about to point at /dev/null.
                write_fd = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 3)
            os.setsid()                 # no controlling terminal, own session
            if os.fork() != 0:
                os._exit(0)             # the supervisor is reparented to init
            os.chdir("/")
            os.umask(0o027)
            detach_stdio_and_descriptors(write_fd)
            setup_logging(agent_log)
            code = Supervisor(options, write_fd).run()
        except BaseException:
            try:
                log.exception("supervisor failed")
            finally:
                os._exit(1)
        os._exit(code)
    os.close(write_fd)
    os.waitpid(first_child, 0)
    message = read_until_eof(read_fd, START_READY_TIMEOUT_S + 5).strip()
    os.close(read_fd)
    words = message.split()
    if words and words[0] == "started":
        print(json.dumps({"changed": True, "running": True,
                          "supervisor_pid": int(words[1]), "pid": int(words[2])}))
        return 0
    if words and words[0] == "running":
        print(json.dumps({"changed": False, "running": True, "supervisor_pid": words[1]}))
        return 0
    sys.stderr.write("bpfleet-agent start: %s\n" % (message or "the supervisor did not report, see " + agent_log))
    return 1


def read_until_eof(fd, timeout_s):
    deadline = time.monotonic() + timeout_s
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready = select.select([fd], [], [], remaining)[0]
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def command_stop(options):
    run_dir = options.run_dir
    supervisor = supervisor_pid(run_dir)
    worker = worker_pid(run_dir)
    if not supervisor and not worker:
        print(json.dumps({"changed": False, "running": False}))
        return 0
    for pid in (supervisor, worker):
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not is_locked(os.path.join(run_dir, PID_FILE)) and not is_locked(os.path.join(run_dir, WORKER_LOCK_FILE)):
            break
        time.sleep(0.1)
    else:
        for pid in (supervisor, worker):
            if pid and is_agent_process(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    pid_path = os.path.join(run_dir, PID_FILE)
    if not is_locked(pid_path):
        try:
            os.unlink(pid_path)
        except FileNotFoundError:
            pass
    print(json.dumps({"changed": True, "running": False, "supervisor_pid": supervisor, "pid": worker}))
    return 0


def command_status(options):
    run_dir = options.run_dir
    supervisor = supervisor_pid(run_dir)
    worker = worker_pid(run_dir)
    status = read_status_file(run_dir)
    running = bool(supervisor or worker)
    report = {
        "running": running,
        "mode": "daemon" if supervisor else ("foreground" if worker else None),
        "supervisor_pid": supervisor,
        "pid": worker,
        "version": AGENT_VERSION,
        "status_file": os.path.join(run_dir, STATUS_FILE),
        "status": status if running else None,
    }
    print(json.dumps(report, sort_keys=True))
    return 0 if running else EXIT_NOT_RUNNING


def capabilities_now():
    sets = _privdrop.capability_sets()
    return {"effective": _privdrop.describe(sets.get("CapEff", 0)),
            "bounding": _privdrop.describe(sets.get("CapBnd", 0))} if sets else None


def drop_privileges(options, who):
    """Keep only CAP_BPF (CAP_SYS_ADMIN before Linux 5.8), in both service modes
    (_privdrop.py, docs/security.md). A failure is logged, not fatal: logging must go on."""
    if not options.drop_capabilities or os.geteuid() != 0:
        return
    try:
        sets = _privdrop.drop()
    except (OSError, AttributeError) as error:
        log.warning("%s: could not drop capabilities: %s", who, error)
        return
    log.info("%s: capabilities now %s (bounding %s)", who, ",".join(_privdrop.describe(sets.get("CapEff", 0))),
             ",".join(_privdrop.describe(sets.get("CapBnd", 0))))


def command_run(options):
    os.umask(0o027)
    if options.agent_log:
        redirect_stderr_to(options.agent_log)
    setup_logging(options.agent_log)
    drop_privileges(options, "worker")
    return Agent(options).run()


# Options that the config file may set, with their defaults (command line > file > default).
CONFIG_DEFAULTS = {
    "state_dir": DEFAULT_STATE_DIR,
    "pin_root": DEFAULT_PIN_ROOT,
    "run_dir": DEFAULT_RUN_DIR,
    "agent_log": None,
    "poll_interval": 0.05,
    "rescan_interval": 2.0,
    "status_interval": 1.0,
    "textfile_dir": None,
    "syslog": None,
    "health_window": _health.DEFAULTS["window_s"],
    "health_sample_interval": _health.DEFAULTS["sample_interval_s"],
    # Directories a policy's log.sink.file may lie under (default /var/log/bpfleet).
    "sink_dirs": None,
    # Keep only CAP_BPF after start (docs/security.md); false keeps what the agent was started with.
    "drop_capabilities": True,
}


def load_config(path, required):
    """The agent's config file (JSON object, keys of CONFIG_DEFAULTS); {} when absent and
    not asked for explicitly."""
    try:
        with open(path, "rb") as config_file:
            config = json.loads(config_file.read().decode("utf-8"))
    except FileNotFoundError:
        if required:
            raise SystemExit("bpfleet-agent: config file %s does not exist" % path) from None
        return {}
    except (OSError, ValueError) as error:
        raise SystemExit("bpfleet-agent: cannot read config file %s: %s" % (path, error)) from error
    if not isinstance(config, dict):
        raise SystemExit("bpfleet-agent: %s: expected a JSON object" % path)
    unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
    if unknown:
        raise SystemExit("bpfleet-agent: %s: unknown keys %s (known: %s)"
                         % (path, ", ".join(unknown), ", ".join(sorted(CONFIG_DEFAULTS))))
    return config


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="bpfleet-agent",
        description="Drain bpfleet ring buffers into JSON lines logs.")
    parser.add_argument("--version", action="version", version="bpfleet-agent " + AGENT_VERSION)
    parser.add_argument("command", choices=("run", "start", "stop", "restart", "status"))
    parser.add_argument("--config", default=None,
                        help="JSON config file (default %s when it exists); options given here win" % DEFAULT_CONFIG)
    parser.add_argument("--state-dir", help="policies' state.json (%s/<policy>/)" % DEFAULT_STATE_DIR)
    parser.add_argument("--pin-root", help="bpffs pins (%s/<policy>/maps/events)" % DEFAULT_PIN_ROOT)
    parser.add_argument("--run-dir", help="pid, lock, status and cursor files (%s)" % DEFAULT_RUN_DIR)
    parser.add_argument("--agent-log",
                        help="the agent's own messages; default: stderr for run, %s for start" % DEFAULT_AGENT_LOG)
    parser.add_argument("--poll-interval", type=float,
                        help="seconds between ring buffer checks without wakeup (0.05)")
    parser.add_argument("--rescan-interval", type=float,
                        help="seconds between scans of the state directory (2)")
    parser.add_argument("--status-interval", type=float,
                        help="seconds between status and metrics file writes (1)")
    parser.add_argument("--health-window", type=float,
                        help="seconds over which the health model judges record loss and errors (300)")
    parser.add_argument("--health-sample-interval", type=float,
                        help="seconds between the points of counter history kept for it (10)")
    parser.add_argument("--textfile-dir",
                        help="write bpfleet.prom there for node_exporter's textfile collector (off by default)")
    parser.add_argument("--sink-dir", dest="sink_dirs", action="append",
                        help="a directory policies' log files may lie under (repeatable; default /var/log/bpfleet)")
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    config = load_config(options.config or DEFAULT_CONFIG, required=options.config is not None)
    for key, default in CONFIG_DEFAULTS.items():
        if getattr(options, key, None) is None:
            setattr(options, key, config.get(key, default))
    return options


def main(argv=None):
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    if options.command == "run":
        return command_run(options)
    if options.command == "start":
        return command_start(options)
    if options.command == "stop":
        return command_stop(options)
    if options.command == "restart":
        command_stop(options)
        return command_start(options)
    return command_status(options)


if __name__ == "__main__":
    sys.exit(main())
