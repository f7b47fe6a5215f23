# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real-kernel tests of _bpf_syscall, _ringbuf and _records, and of bpfleet-agent.

No mocks: BCC (only importable from /usr/bin/python3, python3-bpfcc) compiles a small XDP
program that copies the first bytes of its input packet into a ring buffer record. The
tests feed it records with BPF_PROG_TEST_RUN and read them back through the mmap reader.

BCC runs in a helper process inside a private mount namespace with its own bpffs (nothing
is mounted in the root namespace, nothing is attached to any interface). The helper
pins the objects there, reports their ids and obeys pin/unpin commands; the test process
reaches programs and maps by id (BPF_*_GET_FD_BY_ID), and the agent under test runs in
the helper's mount namespace (nsenter) to find the pins.
"""

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _records, _ringbuf
from ansible_collections.bpfleet.core.plugins.module_utils._host_paths import read_json

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))
import private_bpffs  # noqa: E402  (tests/fleet: the checks of a machine that compiles with BCC)

MODULE_UTILS = os.path.join(REPO, "plugins", "module_utils")
AGENT = os.path.join(REPO, "roles", "host", "files", "bpfleet_agent.py")
HOST_PYTHON = "/usr/bin/python3"       # the hosts' interpreter, the one with BCC

RING_PAGES = 4                          # 16 KiB: small, so tests wrap around it many times
PAYLOAD_EXTRA = 13                      # bytes of fake L4 payload in "with payload" records
RECORD_SLOT = 96                        # 88-byte record + 8-byte ring header, 8-aligned
PAYLOAD_SLOT = 112                      # 88 + 13 + 8 = 109, aligned up to 112

# Control bits, carried in the record's _pad[0] (offset 80) of the input packet.
DISCARD = 1
WITH_PAYLOAD = 2
SECOND_RING = 4
FORCE_WAKEUP = 8

XDP_PASS = 2

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#define RECORD_SIZE 88
#define PAYLOAD_EXTRA %(payload_extra)d

BPF_RINGBUF_OUTPUT(events, %(ring_pages)d);
BPF_RINGBUF_OUTPUT(events2, %(ring_pages)d);
BPF_PERCPU_ARRAY(runs, u64, 4);
struct lpm_v4 { u32 prefixlen; u8 addr[4]; };
BPF_LPM_TRIE(deny_v4, struct lpm_v4, u32, 1024);

/* One record per run: the first bytes of the packet, verbatim. Control bits in byte 80
 * (the record's padding): 1 discard instead of submit, 2 copy PAYLOAD_EXTRA more bytes,
 * 4 use the second ring buffer, 8 submit with a forced wakeup. */
int emit(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    u64 *count = runs.lookup(&zero);
    if (count)
        *count += 1;
    if (data + RECORD_SIZE + PAYLOAD_EXTRA > data_end)
        return XDP_ABORTED;
    u8 control = *((u8 *)data + 80);
    u64 wakeup = (control & 8) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    void *rec;
    if (control & 2) {
        rec = (control & 4) ? events2.ringbuf_reserve(RECORD_SIZE + PAYLOAD_EXTRA)
                            : events.ringbuf_reserve(RECORD_SIZE + PAYLOAD_EXTRA);
        if (!rec)
            return XDP_DROP;
        __builtin_memcpy(rec, data, RECORD_SIZE + PAYLOAD_EXTRA);
    } else {
        rec = (control & 4) ? events2.ringbuf_reserve(RECORD_SIZE) : events.ringbuf_reserve(RECORD_SIZE);
        if (!rec)
            return XDP_DROP;
        __builtin_memcpy(rec, data, RECORD_SIZE);
    }
    if (control & 1) {
        if (control & 4)
            events2.ringbuf_discard(rec, wakeup);
        else
            events.ringbuf_discard(rec, wakeup);
    } else {
        if (control & 4)
            events2.ringbuf_submit(rec, wakeup);
        else
            events.ringbuf_submit(rec, wakeup);
    }
    return XDP_PASS;
}
""" % {"payload_extra": PAYLOAD_EXTRA, "ring_pages": RING_PAGES}

# Runs under /usr/bin/python3 in the private mount namespace (see the module docstring).
HELPER = r"""
import json, os, subprocess, sys
config = json.loads(sys.argv[1])
sys.path.insert(0, config["module_utils"])
import _bpf_syscall as bpf
from bcc import BPF

b = BPF(text=config["program"])
prog = b.load_func("emit", BPF.XDP)
maps = {name: b[name].map_fd for name in ("events", "events2", "runs", "deny_v4")}

def pin(fd, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    bpf.obj_pin(fd, path)

pin(prog.fd, "/sys/fs/bpf/test/prog_emit")
pin(maps["events"], "/sys/fs/bpf/test/events")
report = {
    "pid": os.getpid(),
    "prog_id": bpf.prog_info(prog.fd)["id"],
    "maps": {name: bpf.map_info(fd)["id"] for name, fd in maps.items()},
}
with bpf.open_pinned("/sys/fs/bpf/test/prog_emit") as fd:
    report["pinned_prog"] = bpf.prog_info(fd)
with bpf.open_pinned("/sys/fs/bpf/test/events") as fd:
    report["pinned_events"] = bpf.map_info(fd)
with bpf.open_pinned("/sys/fs/bpf/test/events", bpf.BPF_F_RDONLY) as fd:
    report["pinned_events_readonly_id"] = bpf.map_info(fd)["id"]
try:
    bpf.obj_pin(maps["events"], "/sys/fs/bpf/test/events")
except bpf.BpfError as error:
    report["pin_twice"] = {"errno": error.errno, "message": str(error)}
try:
    tool = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", "/sys/fs/bpf/test/prog_emit"],
                          capture_output=True, text=True)
    report["bpftool_prog"] = json.loads(tool.stdout) if tool.returncode == 0 else None
except OSError:
    report["bpftool_prog"] = None
print(json.dumps(report), flush=True)

for line in sys.stdin:
    words = line.split()
    try:
        if words[0] == "pin":
            pin(maps[words[1]], words[2])
        elif words[0] == "unpin":
            os.unlink(words[1])
        elif words[0] == "quit":
            break
        print("ok", flush=True)
    except Exception as error:
        print("error %s" % error, flush=True)
"""


def _kernel_skip_reason():
    if shutil.which("nsenter") is None and sys.platform.startswith("linux"):
        return "needs nsenter (util-linux)"
    return private_bpffs.skip_reason()


class KernelObjects:
    """The helper process and fds (in this process) of its program and maps."""

    def __init__(self):
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t bpf bpf /sys/fs/bpf && exec "$0" -c "$1" "$2"', HOST_PYTHON, HELPER,
             json.dumps({"module_utils": MODULE_UTILS, "program": PROGRAM})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read()
            raise RuntimeError("BCC helper failed:\n" + stderr[-4000:])
        self.report = json.loads(line)
        # BCC's compiler warnings would fill the pipe: drain stderr in the background.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        self.pid = self.report["pid"]
        self.prog_fd = bpf.prog_get_fd_by_id(self.report["prog_id"])
        self.map_fds = {name: bpf.map_get_fd_by_id(map_id) for name, map_id in self.report["maps"].items()}

    def command(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", "helper: %r -> %r" % (line, answer)

    def emit(self, record, repeat=1, control=0, payload=b""):
        """Run the program `repeat` times on a packet made of `record` (+ payload)."""
        packet = bytearray(record[:88].ljust(88, b"\0"))
        packet[80] = control
        packet += payload.ljust(PAYLOAD_EXTRA, b"\0")[:PAYLOAD_EXTRA]
        packet += bytes(max(0, 128 - len(packet)))
        result = bpf.prog_test_run(self.prog_fd, bytes(packet), repeat=repeat)
        return result["retval"]

    def close(self):
        for fd in [self.prog_fd] + list(self.map_fds.values()):
            bpf.close_fd(fd)
        try:
            self.command("quit")
        except (AssertionError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def kernel():
    reason = _kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    objects = KernelObjects()
    try:
        yield objects
    finally:
        objects.close()


@pytest.fixture
def ring(kernel):
    """A reader of `events`, emptied first (tests share the module's maps)."""
    with _ringbuf.RingBuffer(kernel.map_fds["events"]) as reader:
        reader.drain()
        assert reader.available_bytes() == 0
        yield reader


def make_record(index=0, **overrides):
    """A v1 record; `index` varies ports, addresses and time so records differ."""
    values = {
        "ts_boot_ns": 7_000_000_000 + index, "ifindex": 1, "pkt_len": 60 + index, "dir": 0, "action": 1,
        "rule": 1, "vlan": 0, "eth_proto": 0x0800, "src_mac": bytes.fromhex("020000000001"),
        "dst_mac": bytes.fromhex("020000000002"), "ip_ver": 4, "proto": 6, "ttl": 64, "tcp_flags": 0x02,
        "src_port": 1024 + index, "dst_port": 80, "src_ip": bytes([203, 0, 113, index % 250]) + bytes(12),
        "dst_ip": bytes([198, 51, 100, 7]) + bytes(12), "payload_len": 0, "flags": 0, "version": 1, "rewrite": 0,
    }
    values.update(overrides)
    return _records.RECORD.pack(*values.values())


# --- _bpf_syscall: pins and object info ------------------------------------------------------

def test_pinned_objects_are_the_created_ones(kernel):
    report = kernel.report
    assert report["pinned_events"]["id"] == report["maps"]["events"]
    assert report["pinned_events_readonly_id"] == report["maps"]["events"]
    assert report["pinned_events"]["type"] == bpf.MAP_TYPE_RINGBUF
    assert report["pinned_events"]["max_entries"] == RING_PAGES * 4096
    assert report["pinned_events"]["name"] == "events"
    assert report["pinned_prog"]["id"] == report["prog_id"]
    assert report["pinned_prog"]["name"] == "emit"
    assert report["pinned_prog"]["type"] == 6           # BPF_PROG_TYPE_XDP
    assert report["pin_twice"]["errno"] == errno.EEXIST
    assert "BPF_OBJ_PIN /sys/fs/bpf/test/events" in report["pin_twice"]["message"]


def test_prog_info_agrees_with_bpftool(kernel):
    listed = kernel.report["bpftool_prog"]
    if listed is None:
        pytest.skip("bpftool is not installed")
    info = bpf.prog_info(kernel.prog_fd)
    assert info["id"] == listed["id"]
    assert info["tag"] == listed["tag"]
    assert len(info["tag"]) == 16
    assert "run_cnt" in info and "run_time_ns" in info


def test_map_info_by_id(kernel):
    info = bpf.map_info(kernel.map_fds["deny_v4"])
    assert info["id"] == kernel.report["maps"]["deny_v4"]
    assert info["type"] == bpf.MAP_TYPE_LPM_TRIE
    assert (info["key_size"], info["value_size"], info["max_entries"]) == (8, 4, 1024)
    assert info["map_flags"] & bpf.BPF_F_NO_PREALLOC


def test_obj_get_error_names_the_path():
    if os.geteuid() != 0:
        pytest.skip("bpf(2) needs root")
    with pytest.raises(bpf.BpfError) as caught:
        bpf.obj_get("/nonexistent/bpfleet/maps/events")
    assert caught.value.errno == errno.ENOENT
    assert "BPF_OBJ_GET /nonexistent/bpfleet/maps/events" in str(caught.value)
    assert isinstance(caught.value, OSError)


# --- _bpf_syscall: maps -----------------------------------------------------------------------

def lpm_key(cidr):
    address, prefix = cidr.split("/")
    return struct.pack("<I4s", int(prefix), socket.inet_aton(address))


def test_lpm_trie_batch_update_keys_lookup_delete(kernel):
    fd = kernel.map_fds["deny_v4"]
    cidrs = ["203.0.113.0/24", "198.51.100.7/32", "198.51.0.0/16", "203.0.113.128/25"]
    assert bpf.map_update_batch(fd, [lpm_key(c) for c in cidrs],
                                [struct.pack("<I", rule) for rule in (1, 2, 3, 4)]) == 4
    # The first get-next-key call passes NULL: it must list every prefix exactly once.
    keys = list(bpf.map_keys(fd, 8))
    assert sorted(keys) == sorted(lpm_key(c) for c in cidrs)
    # Lookups in an LPM trie are longest-prefix matches.
    assert bpf.map_lookup(fd, lpm_key("203.0.113.200/32"), 4) == struct.pack("<I", 4)
    assert bpf.map_lookup(fd, lpm_key("203.0.113.5/32"), 4) == struct.pack("<I", 1)
    assert bpf.map_lookup(fd, lpm_key("192.0.2.1/32"), 4) is None
    # Absent keys are skipped, the others deleted.
    deleted = bpf.map_delete_batch(fd, [lpm_key("203.0.113.0/24"), lpm_key("192.0.2.0/24"),
                                        lpm_key("198.51.100.7/32")])
    assert deleted == 2
    assert sorted(bpf.map_keys(fd, 8)) == sorted([lpm_key("198.51.0.0/16"), lpm_key("203.0.113.128/25")])
    assert bpf.map_delete(fd, lpm_key("198.51.0.0/16")) is True
    assert bpf.map_delete(fd, lpm_key("198.51.0.0/16")) is False
    # An invalid element is reported by index instead of failing silently.
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_update_batch(fd, [lpm_key("192.0.2.0/24"), struct.pack("<I4s", 33, bytes(4))],
                             [struct.pack("<I", 9)] * 2)
    assert caught.value.errno == errno.EINVAL
    assert "element 1" in str(caught.value)
    assert bpf.map_lookup(fd, lpm_key("192.0.2.9/32"), 4) == struct.pack("<I", 9)
    bpf.map_delete_batch(fd, list(bpf.map_keys(fd, 8)))
    assert list(bpf.map_keys(fd, 8)) == []


def test_lpm_trie_batch_of_thousands(kernel):
    fd = kernel.map_fds["deny_v4"]
    keys = [struct.pack("<I4s", 32, struct.pack(">I", 0xC6336400 + i)) for i in range(1000)]  # 198.51.100.0+
    assert bpf.map_update_batch(fd, keys, [struct.pack("<I", 1)] * len(keys)) == 1000
    assert len(list(bpf.map_keys(fd, 8))) == 1000
    assert bpf.map_delete_batch(fd, keys) == 1000
    assert list(bpf.map_keys(fd, 8)) == []


def test_percpu_array_counts_program_runs(kernel):
    fd = kernel.map_fds["runs"]
    cpus = bpf.possible_cpus()
    with open("/sys/devices/system/cpu/possible") as possible:
        text = possible.read().strip()
    assert cpus == sum(int(p.partition("-")[2] or p) - int(p.partition("-")[0]) + 1 for p in text.split(","))
    key = struct.pack("<I", 0)

    def total():
        values = bpf.percpu_lookup(fd, key, 8)
        assert len(values) == cpus
        return sum(struct.unpack("<Q", v)[0] for v in values)

    before = total()
    kernel.emit(make_record(), repeat=37, control=DISCARD)
    assert total() - before == 37


def test_percpu_array_batch_update_and_delete_refusal(kernel):
    fd = kernel.map_fds["runs"]
    cpus = bpf.possible_cpus()
    keys = [struct.pack("<I", 2), struct.pack("<I", 3)]
    values = [b"".join(struct.pack("<Q", 100 * slot + cpu) for cpu in range(cpus)) for slot in (2, 3)]
    assert bpf.map_update_batch(fd, keys, values) == 2
    assert bpf.percpu_lookup(fd, keys[1], 8) == [struct.pack("<Q", 300 + cpu) for cpu in range(cpus)]
    # Arrays cannot delete: the batch falls back per element, which reports the kernel's EINVAL.
    with pytest.raises(bpf.BpfError) as caught:
        bpf.map_delete_batch(fd, keys)
    assert caught.value.errno == errno.EINVAL


# --- _ringbuf + _records ---------------------------------------------------------------------

def test_drain_returns_exactly_the_records_emitted(kernel, ring):
    sent = [make_record(i) for i in range(20)]
    for record in sent:
        assert kernel.emit(record) == XDP_PASS
    assert ring.available_bytes() == 20 * RECORD_SLOT
    received = ring.drain()
    assert received == sent
    assert ring.available_bytes() == 0
    assert ring.drain() == []

    result = _records.decode_batch(received, ["src_ip", "src_port", "len", "tcp_flags", "rule"], host="h",
                                   rule_names={"1": "deny"}, iface_names={1: "lo"},
                                   boot_to_realtime_ns=1_000_000_000)
    assert result.malformed == 0
    assert [r["src_port"] for r in result.records] == list(range(1024, 1044))
    assert result.records[3] == {"ts": "1970-01-01T00:00:08.000000003Z", "host": "h", "iface": "lo",
                                 "dir": "ingress", "rule": "deny", "src_ip": "203.0.113.3", "len": 63,
                                 "src_port": 1027, "tcp_flags": "SYN"}


def test_repeated_runs_wrap_around_the_ring_many_times(kernel, ring):
    start = ring.consumer_position
    for round_number in range(12):
        record = make_record(round_number)
        assert kernel.emit(record, repeat=100) == XDP_PASS
        received = ring.drain()
        assert len(received) == 100
        assert set(received) == {record}
    assert ring.consumer_position - start == 12 * 100 * RECORD_SLOT     # 7 times round a 16 KiB ring


def test_variable_sizes_and_records_split_by_the_ring_end(kernel, ring):
    """112-byte slots do not divide the ring: records cross its end and must come out whole
    (the data pages are mapped twice in a row)."""
    for round_number in range(6):
        payload = bytes([round_number]) * PAYLOAD_EXTRA
        plain = make_record(round_number)
        with_payload = make_record(round_number, payload_len=PAYLOAD_EXTRA)
        for _repeat in range(30):
            kernel.emit(plain)
            kernel.emit(with_payload, control=WITH_PAYLOAD, payload=payload)
        received = ring.drain()
        # The program copies the packet verbatim, control byte (offset 80, padding) included.
        sent_with_payload = with_payload[:80] + bytes([WITH_PAYLOAD]) + with_payload[81:] + payload
        assert received == [plain, sent_with_payload] * 30
        decoded = _records.decode_batch(received, ["len"], host="h")
        assert decoded.malformed == 0
        assert _records.record_payload(received[1]) == (payload, False)


def test_full_ring_keeps_what_fits_and_max_records_pages_through_it(kernel, ring):
    record = make_record(1)
    kernel.emit(record, repeat=300)
    capacity = (RING_PAGES * 4096 - 1) // RECORD_SLOT      # the kernel keeps one byte free
    assert ring.available_bytes() == capacity * RECORD_SLOT
    first = ring.drain(max_records=50)
    assert len(first) == 50
    assert ring.available_bytes() == (capacity - 50) * RECORD_SLOT
    rest = ring.drain()
    assert len(rest) == capacity - 50
    assert ring.drain(max_records=10) == []


def test_discarded_records_are_skipped(kernel, ring):
    kept = []
    for i in range(10):
        record = make_record(i)
        if i % 2:
            kernel.emit(record, control=DISCARD)
        else:
            kernel.emit(record)
            kept.append(record)
    assert ring.available_bytes() == 10 * RECORD_SLOT        # discarded records still take space
    assert ring.drain(max_records=3) == kept[:3]             # the limit counts delivered records
    assert ring.drain() == kept[3:]
    assert ring.available_bytes() == 0


def test_malformed_records_from_the_kernel_are_counted(kernel, ring):
    kernel.emit(make_record(1))
    kernel.emit(make_record(2, version=7))
    kernel.emit(make_record(3, payload_len=200))
    result = _records.decode_batch(ring.drain(), ["src_port"], host="h")
    assert result.malformed == 2
    assert [r["src_port"] for r in result.records] == [1025]


def test_wait_sees_pending_records_and_is_woken_by_a_forced_wakeup(kernel, ring):
    assert ring.wait(0) is False
    started = time.monotonic()
    assert ring.wait(0.2) is False
    assert time.monotonic() - started >= 0.15

    kernel.emit(make_record())                       # BPF_RB_NO_WAKEUP: no wakeup, but pending
    assert ring.wait(5) is True
    ring.drain()

    def emit_later():
        time.sleep(0.3)
        kernel.emit(make_record(), control=FORCE_WAKEUP)

    thread = threading.Thread(target=emit_later)
    thread.start()
    started = time.monotonic()
    try:
        assert ring.wait(10) is True
        assert time.monotonic() - started < 5        # woken, not timed out
    finally:
        thread.join()
    assert len(ring.drain()) == 1


def test_ringbuffer_rejects_other_map_types_and_closes(kernel):
    with pytest.raises(ValueError, match="not a ring buffer"):
        _ringbuf.RingBuffer(kernel.map_fds["runs"])
    reader = _ringbuf.RingBuffer(kernel.map_fds["events"])
    duplicate = reader.fileno()
    assert duplicate != kernel.map_fds["events"]
    reader.close()
    assert reader.closed
    reader.close()                                   # idempotent
    with pytest.raises(OSError):
        os.fstat(duplicate)
    assert bpf.map_info(kernel.map_fds["events"])["type"] == bpf.MAP_TYPE_RINGBUF   # ours still open


# --- the agent against the kernel -------------------------------------------------------------

def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def read_lines(path):
    try:
        with open(path) as handle:
            return [json.loads(line) for line in handle]
    except FileNotFoundError:
        return []


def test_agent_writes_records_follows_replacement_and_stops_cleanly(kernel, tmp_path):
    state_dir = tmp_path / "state"
    run_dir = tmp_path / "run"
    log_file = tmp_path / "log" / "sub" / "headers.jsonl"
    (state_dir / "web").mkdir(parents=True)
    state = {"schema": 1, "name": "web", "rules": {"0": "default", "1": "deny"},
             "log": {"enabled": True, "fields": ["action", "rule", "src_ip", "dst_port", "len", "proto"],
                     "directions": ["ingress"], "file": str(log_file)}}
    (state_dir / "web" / "state.json").write_text(json.dumps(state))
    kernel.command("pin events /sys/fs/bpf/bpfleet/web/maps/events")
    with _ringbuf.RingBuffer(kernel.map_fds["events"]) as leftovers:
        leftovers.drain()

    agent_output = open(tmp_path / "agent.out", "wb")
    agent = subprocess.Popen(
        ["nsenter", "--target", str(kernel.pid), "--mount", "--", HOST_PYTHON, AGENT, "run",
         "--state-dir", str(state_dir), "--run-dir", str(run_dir), "--poll-interval", "0.02",
         "--sink-dir", str(tmp_path / "log"),
         "--rescan-interval", "0.2", "--status-interval", "0.2"],
        stdout=agent_output, stderr=subprocess.STDOUT)
    status_path = run_dir / "agent-status.json"

    def policy_status():
        return ((read_json(status_path) or {}).get("policies") or {}).get("web") or {}

    try:
        wait_for(lambda: policy_status().get("map_id") == kernel.report["maps"]["events"], what="agent on events")
        now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for i in range(40):
            kernel.emit(make_record(i, ts_boot_ns=now_boot, dst_port=8000 + i))
        kernel.emit(make_record(99, version=9))                      # malformed
        lines = wait_for(lambda: len(read_lines(log_file)) >= 40 and read_lines(log_file), what="40 lines")
        assert len(lines) == 40
        assert [line["dst_port"] for line in lines] == list(range(8000, 8040))
        assert lines[0] == {
            "ts": lines[0]["ts"], "host": socket.gethostname(), "iface": "lo", "dir": "ingress",
            "action": "drop", "rule": "deny", "src_ip": "203.0.113.0", "len": 60, "proto": "tcp",
            "dst_port": 8000,
        }
        assert list(lines[0]) == ["ts", "host", "iface", "dir", "action", "rule", "src_ip", "len", "proto",
                                  "dst_port"]
        written = time.mktime(time.strptime(lines[0]["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert abs(written - time.time()) < 60
        assert oct(os.stat(log_file).st_mode & 0o777) == "0o640"
        assert oct(os.stat(log_file.parent).st_mode & 0o777) == "0o750"
        wait_for(lambda: policy_status().get("records_malformed") == 1, what="malformed count")

        # A recompile pins another ring buffer at the same path: the agent follows the map id.
        kernel.command("pin events2 /sys/fs/bpf/bpfleet/web/maps/events")
        wait_for(lambda: policy_status().get("map_id") == kernel.report["maps"]["events2"], what="events2")
        for i in range(5):
            kernel.emit(make_record(i, dst_port=9000 + i), control=SECOND_RING)
        wait_for(lambda: len(read_lines(log_file)) == 45, what="records of the new ring")
        assert [line["dst_port"] for line in read_lines(log_file)[40:]] == list(range(9000, 9005))

        # logrotate: move the file away, SIGHUP, the next records go to a new file.
        os.rename(log_file, str(log_file) + ".1")
        agent.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        for i in range(3):
            kernel.emit(make_record(i, dst_port=7000 + i), control=SECOND_RING)
        wait_for(lambda: len(read_lines(log_file)) == 3, what="records in the reopened file")

        # The status file is rewritten every --status-interval: wait for the one that
        # includes the last batch instead of reading whatever is there.
        wait_for(lambda: policy_status().get("records_written") == 48, what="status counting 48 records")
        status = read_json(status_path)
        assert status["pid"] == agent.pid
        assert status["version"] == "0.1.0"
        assert status["records_malformed"] == 1
        assert abs(status["updated_at_unix"] - time.time()) < 5
        web = status["policies"]["web"]
        assert web["file"] == str(log_file)
        assert web["records_written"] == 48
        assert web["bytes_written"] == os.path.getsize(str(log_file) + ".1") + os.path.getsize(log_file)
        assert web["records_lost_user"] == 0
        assert web["last_record_time"] == read_lines(log_file)[-1]["ts"]

        # SIGTERM: what is still queued is written before the agent exits.
        for i in range(7):
            kernel.emit(make_record(i, dst_port=6000 + i), control=SECOND_RING)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert [line["dst_port"] for line in read_lines(log_file)][-7:] == list(range(6000, 6007))
        assert read_json(status_path)["policies"]["web"]["records_written"] == 55
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent_output.close()
        kernel.command("pin events /sys/fs/bpf/test/events")
        kernel.command("unpin /sys/fs/bpf/bpfleet/web/maps/events")
    output = (tmp_path / "agent.out").read_text()
    assert "ring buffer replaced" in output
    assert "Traceback" not in output


def test_agent_forgets_a_removed_policy_and_idles(kernel, tmp_path):
    state_dir = tmp_path / "state"
    run_dir = tmp_path / "run"
    (state_dir / "api").mkdir(parents=True)
    (state_dir / "api" / "state.json").write_text(json.dumps(
        {"name": "api", "rules": {}, "log": {"enabled": True, "fields": ["len"], "file": str(tmp_path / "a.jsonl")}}))
    kernel.command("pin events /sys/fs/bpf/bpfleet/api/maps/events")
    agent = subprocess.Popen(
        ["nsenter", "--target", str(kernel.pid), "--mount", "--", HOST_PYTHON, AGENT, "run",
         "--state-dir", str(state_dir), "--run-dir", str(run_dir), "--rescan-interval", "0.2",
         "--sink-dir", str(tmp_path),
         "--status-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_path = run_dir / "agent-status.json"
    try:
        wait_for(lambda: "api" in ((read_json(status_path) or {}).get("policies") or {}), what="policy found")
        kernel.emit(make_record(1))
        os.unlink(state_dir / "api" / "state.json")
        wait_for(lambda: (read_json(status_path) or {}).get("policies") == {}, what="policy forgotten")
        # Queued records were written before the policy was closed.
        assert len(read_lines(tmp_path / "a.jsonl")) == 1
        first_update = read_json(status_path)["updated_at_unix"]
        wait_for(lambda: read_json(status_path)["updated_at_unix"] > first_update, what="idle status updates")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        kernel.command("unpin /sys/fs/bpf/bpfleet/api/maps/events")


# --- the agent's daemon mode (no kernel objects needed: an idle agent) ---------------------------

def _process_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists(HOST_PYTHON),
                    reason="Linux with %s" % HOST_PYTHON)
def test_agent_daemon_start_status_restart_stop(tmp_path):
    options = ["--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"),
               "--agent-log", str(tmp_path / "log" / "agent.log"), "--status-interval", "0.2"]

    def agent(command, timeout=30):
        # capture_output: run() returns only when every holder of the pipes closed them,
        # so this also proves the daemon detached from our stdout/stderr.
        return subprocess.run([HOST_PYTHON, AGENT, command] + options, capture_output=True, text=True,
                              timeout=timeout, check=False)

    pid_file = tmp_path / "run" / "agent.pid"
    supervisor = worker = None
    try:
        started = time.monotonic()
        result = agent("start")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10
        report = json.loads(result.stdout)
        assert report["changed"] is True
        supervisor, worker = report["supervisor_pid"], report["pid"]
        assert int(pid_file.read_text()) == supervisor
        assert os.getsid(supervisor) != os.getsid(0)          # own session, detached from ours

        status = agent("status")
        assert status.returncode == 0
        assert json.loads(status.stdout)["running"] is True
        assert json.loads(status.stdout)["mode"] == "daemon"
        assert json.loads(status.stdout)["pid"] == worker

        again = agent("start")
        assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False

        # The supervisor restarts a dead worker (after a 1 s backoff).
        os.kill(worker, signal.SIGKILL)
        restarted = wait_for(lambda: (read_json(tmp_path / "run" / "agent-status.json") or {}).get("pid")
                             not in (None, worker), timeout=15, what="restarted worker")
        assert restarted
        worker = read_json(tmp_path / "run" / "agent-status.json")["pid"]
        assert _process_alive(worker)

        stopped = agent("stop")
        assert stopped.returncode == 0
        assert not pid_file.exists()
        wait_for(lambda: not _process_alive(supervisor) and not _process_alive(worker), timeout=5,
                 what="processes gone")
        assert agent("status").returncode == 3
        assert agent("stop").returncode == 0                  # not running: still success
        log_text = (tmp_path / "log" / "agent.log").read_text()
        assert "restarting in 1 s" in log_text
        assert "supervisor %d stopped" % supervisor in log_text
    finally:
        for pid in (supervisor, worker):
            if pid and _process_alive(pid):
                os.kill(pid, signal.SIGKILL)
