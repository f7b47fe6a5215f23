# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bpfleet-agent: drains the policies' ring buffers into JSON lines logs.

Installed by the bpfleet.core.host role as /usr/lib/bpfleet/agent/bpfleet_agent.py
next to copies of _bpf_syscall.py, _ringbuf.py, _records.py and _http.py, which
it imports as sibling modules, and started through the launcher bpfleet-agent
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
import _records  # noqa: E402
import _ringbuf  # noqa: E402

DEFAULT_STATE_DIR = "/var/lib/bpfleet"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/bpfleet"
DEFAULT_RUN_DIR = "/run/bpfleet"
DEFAULT_AGENT_LOG = "/var/log/bpfleet/agent.log"
DEFAULT_RECORD_LOG = "/var/log/bpfleet/headers.jsonl"

STATUS_FILE = "agent-status.json"
PID_FILE = "agent.pid"              # supervisor pid, flock()ed while it runs
WORKER_LOCK_FILE = "agent.lock"     # flock()ed by the one worker allowed per host

EXIT_NOT_RUNNING = 3                # LSB "program is not running", for `status`
EXIT_LOCKED = 75                    # EX_TEMPFAIL: another worker holds the lock

# One drain takes at most this many records: it bounds the memory of a batch
# and how long the kernel waits before the space is handed back.
BATCH_RECORDS = 4096
# Per policy and loop turn, so status writes and rescans keep their rhythm and
# one busy policy cannot starve the others.
TURN_RECORDS = 16 * BATCH_RECORDS
# A stopping agent drains what is queued, but not forever if the producer
# keeps going.
FINAL_DRAIN_RECORDS = 1 << 20

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

    def __init__(self, path, max_size=None, keep=5):
        self.path = path
        self.max_size = max_size
        self.keep = max(1, int(keep or 1))
        self.fd = None
        self.identity = None
        self.size = 0

    def open(self):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(fd)
        self.fd, self.identity, self.size = fd, (stat.st_dev, stat.st_ino), stat.st_size

    def write(self, data):
        if self.fd is None:
            self.open()
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)
        if self.max_size and self.size >= self.max_size:
            self.rotate()

    def rotate(self):
        self.close()
        for index in range(self.keep - 1, 0, -1):
            older = "%s.%d" % (self.path, index)
            if os.path.exists(older):
                os.replace(older, "%s.%d" % (self.path, index + 1))
        if os.path.exists(self.path):
            os.replace(self.path, self.path + ".1")
        self.open()

    def reopen(self):
        self.close()
        self.open()

    def reopen_if_moved(self):
        if self.fd is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self.reopen()
            return
        if (stat.st_dev, stat.st_ino) != self.identity:
            self.reopen()

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def write_json_atomically(path, document):
    temporary = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n")
    finally:
        os.close(fd)
    os.replace(temporary, path)


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


# --- one policy ----------------------------------------------------------------

class PolicyLog(object):
    """A policy found in <state-dir>/<key>/state.json: its decoder, ring buffer,
    output file and counters. Counters survive reloads and ring buffer
    replacements; they start at zero with the worker."""

    def __init__(self, key, state_path):
        self.key = key
        self.state_path = state_path
        self.name = key
        self.signature = None
        self.decoder = None
        self.sink = None
        self.ring = None
        self.ring_pin = None
        self.logging_enabled = False
        self.records_written = 0
        self.bytes_written = 0
        self.records_lost_user = 0
        self.records_malformed = 0
        self.last_record_time = None
        self.error = None

    def status(self):
        return {
            "file": self.sink.path if self.sink else None,
            "map_id": self.ring.map_id if self.ring else None,
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
            "records_lost_user": self.records_lost_user,
            "records_malformed": self.records_malformed,
            "last_record_time": self.last_record_time,
            "error": self.error,
        }


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
        self.supervised = options.supervised
        self.status_path = os.path.join(self.run_dir, STATUS_FILE)
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
            self.drain_policy(policy, FINAL_DRAIN_RECORDS)
            self.close_ring(policy)
            self.close_sink(policy)
            policy.logging_enabled = False
            policy.decoder = None
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
            policy.sink = LogSink(path, max_size, keep)
        else:
            policy.sink.max_size, policy.sink.keep = max_size, max(1, int(keep or 1))
        policy.decoder = decoder
        policy.logging_enabled = True
        policy.error = None
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
                self.drain_policy(policy, FINAL_DRAIN_RECORDS)
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
            self.drain_policy(policy, FINAL_DRAIN_RECORDS)
            self.close_ring(policy)
        else:
            log.info("policy %s: reading %s (map id %d, %d bytes)", policy.key, pin, map_id, ring.size)
        policy.ring = ring
        policy.ring_pin = pin
        policy.error = None
        self.poller.register(ring.fileno(), select.EPOLLIN)

    def set_error(self, policy, message):
        if message != policy.error:
            log.warning("policy %s: %s", policy.key, message)
        policy.error = message

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

    def forget(self, policy):
        self.drain_policy(policy, FINAL_DRAIN_RECORDS)
        self.close_ring(policy)
        self.close_sink(policy)

    # the data path

    def drain_policy(self, policy, budget):
        ring = policy.ring
        if ring is None or policy.decoder is None:
            return 0
        total = 0
        while total < budget:
            raw_records = ring.drain(BATCH_RECORDS)
            if not raw_records:
                break
            total += len(raw_records)
            self.emit(policy, raw_records)
        return total

    def emit(self, policy, raw_records):
        result = policy.decoder.decode_batch(raw_records, _records.boot_to_realtime_offset_ns())
        if result.malformed:
            if not policy.records_malformed:
                log.warning("policy %s: malformed records (wrong size or version), counting them", policy.key)
            policy.records_malformed += result.malformed
        records = result.records
        if not records:
            return
        encode = self.encoder.encode
        # ensure_ascii output is pure ASCII: the cheapest bytes conversion.
        data = ("\n".join([encode(record) for record in records]) + "\n").encode("ascii")
        try:
            policy.sink.write(data)
        except OSError as error:
            policy.records_lost_user += len(records)
            self.set_error(policy, "cannot write %s: %s" % (policy.sink.path, error))
            policy.sink.close()          # reopened (and the error retried) with the next batch
            return
        policy.records_written += len(records)
        policy.bytes_written += len(data)
        policy.last_record_time = records[-1]["ts"]
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

    def write_status(self):
        updated_ns = time.time_ns()
        policies = {}
        malformed = 0
        for policy in self.policies.values():
            policies[policy.name] = policy.status()
            malformed += policy.records_malformed
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
            "policies": policies,
        }
        try:
            write_json_atomically(self.status_path, document)
        except OSError as error:
            log.warning("cannot write %s: %s", self.status_path, error)

    def run(self):
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        lock_fd = acquire_lock(os.path.join(self.run_dir, WORKER_LOCK_FILE), WORKER_LOCK_WAIT_S)
        if lock_fd is None:
            log.error("another bpfleet-agent worker holds %s; not starting a second one",
                      os.path.join(self.run_dir, WORKER_LOCK_FILE))
            return EXIT_LOCKED
        self.install_signal_handlers()
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
            drained = self.drain_all(TURN_RECORDS)
            if now >= next_status:
                self.write_status()
                next_status = now + self.status_interval
            if drained < TURN_RECORDS:
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(fd, 2)
    os.close(fd)


def setup_logging(agent_log):
    handler = (logging.handlers.WatchedFileHandler(agent_log) if agent_log
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
    return ["--state-dir", options.state_dir, "--pin-root", options.pin_root,
            "--run-dir", options.run_dir,
            "--poll-interval", str(options.poll_interval),
            "--rescan-interval", str(options.rescan_interval),
            "--status-interval", str(options.status_interval)]


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
        log_fd = os.open(self.agent_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
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


def command_run(options):
    os.umask(0o027)
    if options.agent_log:
        redirect_stderr_to(options.agent_log)
    setup_logging(options.agent_log)
    return Agent(options).run()


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="bpfleet-agent",
        description="Drain bpfleet ring buffers into JSON lines logs.")
    parser.add_argument("--version", action="version", version="bpfleet-agent " + AGENT_VERSION)
    parser.add_argument("command", choices=("run", "start", "stop", "restart", "status"))
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="policies' state.json (%(default)s/<policy>/)")
    parser.add_argument("--pin-root", default=DEFAULT_PIN_ROOT, help="bpffs pins (%(default)s/<policy>/maps/events)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="pid, lock and status files (%(default)s)")
    parser.add_argument("--agent-log", default=None,
                        help="the agent's own messages; default: stderr for run, %s for start" % DEFAULT_AGENT_LOG)
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between ring buffer checks without wakeup (%(default)s)")
    parser.add_argument("--rescan-interval", type=float, default=2.0,
                        help="seconds between scans of the state directory (%(default)s)")
    parser.add_argument("--status-interval", type=float, default=1.0,
                        help="seconds between status file writes (%(default)s)")
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


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
