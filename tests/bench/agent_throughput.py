# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Records/s that bpfleet-agent drains, and what it loses, with a real ring buffer.

    sudo python3 tests/bench/agent_throughput.py [--rate 1000000] [--seconds 60]
        [--ring-mb 16] [--fields all|base|FIELD,...] [--verify] [--json]

A small tc (SCHED_CLS) program, compiled with BCC, reserves and submits one v1 header
record per run into a ring buffer pinned where a policy's is
(<bpffs>/bpfleet/bench/maps/events), with the policy programs' wakeup scheme
(BPF_RB_NO_WAKEUP, a forced wakeup every 1024th record) and their `stats` slots
(records_emitted, records_lost when the ring is full). The generator feeds it with
BPF_PROG_TEST_RUN at the requested rate in 1 ms ticks, so the producer is the kernel's
real ring buffer code, not a simulation. Each record carries a sequence number in its
`len` field. The real agent (roles/host/files/bpfleet_agent.py) runs from this checkout
on a state.json written for the bench policy, in a private mount namespace with its own
bpffs, and writes JSON lines under --out (default .tmp/bench-agent).

Reported (one JSON object with --json): emitted, lost in the kernel (ring full), written
by the agent, lost in the agent, emitted - written - lost (must be 0), the agent's CPU
(user+system, % of one core over the generation window), and the load average. With
--verify the output files are read back: every sequence number exactly once.

Needs root, /usr/bin/python3 with BCC (python3-bpfcc) and kernel headers (see LAB-NOTES).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
MODULE_UTILS = os.path.join(REPO, "plugins", "module_utils")
AGENT = os.path.join(REPO, "roles", "host", "files", "bpfleet_agent.py")
HOST_PYTHON = "/usr/bin/python3"
POLICY = "bench"
ALL_FIELDS = ["action", "rule", "src_mac", "dst_mac", "vlan", "ip_ver", "src_ip", "dst_ip",
              "ttl", "len", "proto", "src_port", "dst_port", "tcp_flags"]

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#define RECORD_SIZE 88
#define WAKEUP_EVERY 1024
#define STAT_RECORDS_EMITTED 3
#define STAT_RECORDS_LOST 4
struct counter { u64 packets; u64 bytes; };
BPF_RINGBUF_OUTPUT(events, RING_PAGES);
BPF_PERCPU_ARRAY(stats, struct counter, 16);
BPF_ARRAY(sequence, u64, 1);

static __always_inline void count(u32 slot)
{
    struct counter *c = stats.lookup(&slot);
    if (c)
        c->packets += 1;
}

/* The input packet is a v1 record template; the record gets the boot time and, in its
 * `len` field (offset 12), a sequence number. */
int generate(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    u32 zero = 0;
    if (data + RECORD_SIZE > data_end)
        return TC_ACT_SHOT;
    u64 *seq = sequence.lookup(&zero);
    if (!seq)
        return TC_ACT_SHOT;
    u64 n = __sync_fetch_and_add(seq, 1);
    u8 *rec = events.ringbuf_reserve(RECORD_SIZE);
    if (!rec) {
        count(STAT_RECORDS_LOST);
        return TC_ACT_OK;
    }
    __builtin_memcpy(rec, data, RECORD_SIZE);
    *(u64 *)rec = bpf_ktime_get_boot_ns();
    *(u32 *)(rec + 12) = (u32)n;
    count(STAT_RECORDS_EMITTED);
    events.ringbuf_submit(rec, ((n + 1) % WAKEUP_EVERY) == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
    return TC_ACT_OK;
}
"""


def template_record():
    import struct
    record = struct.Struct("<QIIBBHHH6s6sBBBBHH16s16sHBBH6x")
    return record.pack(0, 1, 0, 0, 0, 0, 0, 0x0800, bytes.fromhex("020000000001"),
                       bytes.fromhex("020000000002"), 4, 6, 64, 0x12, 40000, 80,
                       bytes([203, 0, 113, 10]) + bytes(12), bytes([198, 51, 100, 7]) + bytes(12),
                       0, 0, 1, 0)


def cpu_seconds(pid, which=(11, 12)):
    """utime + stime of a process (which=(11,) user only, (12,) system only)."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[index]) for index in which) / ticks


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def inner(options):
    """Runs in the private mount namespace, on /usr/bin/python3 (BCC)."""
    sys.path.insert(0, MODULE_UTILS)
    import _bpf_syscall as bpf
    from bcc import BPF

    pages = options.ring_mb * 1024 * 1024 // 4096
    program = BPF(text=PROGRAM.replace("RING_PAGES", str(pages)))
    prog = program.load_func("generate", BPF.SCHED_CLS)
    pin_root = "/sys/fs/bpf/bpfleet"
    maps_dir = os.path.join(pin_root, POLICY, "maps")
    os.makedirs(maps_dir)
    bpf.obj_pin(program["events"].map_fd, os.path.join(maps_dir, "events"))
    bpf.obj_pin(program["stats"].map_fd, os.path.join(maps_dir, "stats"))

    out = os.path.abspath(options.out)
    shutil.rmtree(out, ignore_errors=True)
    state_dir = os.path.join(out, "state")
    run_dir = os.path.join(out, "run")
    os.makedirs(os.path.join(state_dir, POLICY))
    os.makedirs(run_dir)
    record_file = os.path.join(out, "log", "headers.jsonl")
    fields = (ALL_FIELDS if options.fields == "all" else [] if options.fields == "base"
              else options.fields.split(","))
    state = {"name": POLICY, "rules": {"0": "default", "1": "deny"},
             "log": {"enabled": True, "fields": fields, "file": record_file,
                     "max_size": options.max_size, "keep": options.keep}}
    with open(os.path.join(state_dir, POLICY, "state.json"), "w") as handle:
        json.dump(state, handle)
    agent_command = [HOST_PYTHON, AGENT, "run", "--state-dir", state_dir, "--pin-root", pin_root,
                     "--run-dir", run_dir, "--agent-log", os.path.join(out, "agent.log"),
                     "--sink-dir", os.path.dirname(record_file)]
    agent_command += options.agent_arg
    environment = dict(os.environ)
    if options.failpoint:
        environment["BPFLEET_AGENT_FAILPOINT"] = options.failpoint

    def start_agent():
        return subprocess.Popen(agent_command, env=environment)

    agent = start_agent()
    restarts = 0
    status_path = os.path.join(run_dir, "agent-status.json")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = read_json(status_path)
        if status and (status.get("policies") or {}).get(POLICY, {}).get("map_id"):
            break
        if agent.poll() is not None:
            raise SystemExit("the agent exited with %s, see %s/agent.log" % (agent.returncode, out))
        time.sleep(0.05)
    else:
        raise SystemExit("the agent did not open the bench ring buffer in 20 s, see %s/agent.log" % out)

    prog_fd = prog.fd
    packet = template_record() + bytes(40)
    rate = options.rate
    load_before = os.getloadavg()
    cpu_start = cpu_seconds(agent.pid)
    system_start = cpu_seconds(agent.pid, (12,))
    gen_cpu_start = time.process_time()
    start = time.monotonic()
    end = start + options.seconds
    emitted_calls = 0
    next_kill = start + options.kill_every if options.kill_every else None
    while True:
        now = time.monotonic()
        if next_kill is not None and now >= next_kill and now < end:
            agent.kill()                    # SIGKILL under load
            next_kill = now + options.kill_every
        if agent.poll() is not None:
            restarts += 1
            agent = start_agent()
        if now >= end:
            due = int(rate * options.seconds) - emitted_calls
        else:
            due = int(rate * (now - start)) - emitted_calls
        if due > 0:
            # One call runs the program `due` times in the kernel (about 0.1 us each).
            bpf.prog_test_run(prog_fd, packet, repeat=due)
            emitted_calls += due
        if now >= end:
            break
        time.sleep(0.001)
    generated_in = time.monotonic() - start
    cpu_generation = cpu_seconds(agent.pid) - cpu_start if not restarts else None
    system_generation = cpu_seconds(agent.pid, (12,)) - system_start if not restarts else None
    gen_cpu = time.process_time() - gen_cpu_start

    def kernel_counts():
        from struct import unpack_from
        values = bpf.percpu_lookup(program["stats"].map_fd, (3).to_bytes(4, "little"), 16)
        emitted = sum(unpack_from("<Q", value)[0] for value in values)
        values = bpf.percpu_lookup(program["stats"].map_fd, (4).to_bytes(4, "little"), 16)
        lost = sum(unpack_from("<Q", value)[0] for value in values)
        return emitted, lost

    emitted, lost_kernel = kernel_counts()
    # Let the agent catch up, then stop it (it drains what is queued on SIGTERM).
    # (After a restart the status counts only the last worker: wait for an empty ring then.)
    deadline = time.monotonic() + options.drain_timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            restarts += 1
            environment.pop("BPFLEET_AGENT_FAILPOINT", None)
            agent = start_agent()
        policy = ((read_json(status_path) or {}).get("policies") or {}).get(POLICY) or {}
        if restarts:
            with bpf.open_pinned(os.path.join(maps_dir, "events")) as events_fd:
                import _ringbuf
                with _ringbuf.RingBuffer(events_fd) as ring:
                    if ring.available_bytes() == 0:
                        break
        elif policy.get("records_written", 0) + policy.get("records_lost_user", 0) >= emitted:
            break
        time.sleep(0.2)
    drained_in = time.monotonic() - start
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=60)
    policy = (read_json(status_path) or {}).get("policies", {}).get(POLICY) or {}
    written = policy.get("records_written", 0)
    lost_agent = policy.get("records_lost_user", 0)
    result = {
        "rate_offered": rate,
        "seconds": options.seconds,
        "generated_in_s": round(generated_in, 3),
        "drained_in_s": round(drained_in, 3),
        "runs": emitted_calls,
        "emitted": emitted,
        "lost_kernel": lost_kernel,
        "written": written,
        "lost_agent": lost_agent,
        "unaccounted": emitted - written - lost_agent,
        "runs_minus_emitted_minus_lost_kernel": emitted_calls - emitted - lost_kernel,
        "records_per_s_written": round(written / generated_in),
        "agent_cpu_percent_of_one_core": (round(100.0 * cpu_generation / generated_in, 1)
                                          if cpu_generation is not None else None),
        "agent_system_cpu_percent": (round(100.0 * system_generation / generated_in, 1)
                                     if system_generation is not None else None),
        "agent_restarts": restarts,
        "generator_cpu_percent": round(100.0 * gen_cpu / generated_in, 1),
        "bytes_written": policy.get("bytes_written"),
        "fields": fields,
        "ring_mb": options.ring_mb,
        "loadavg_before": [round(value, 2) for value in load_before],
        "loadavg_after": [round(value, 2) for value in os.getloadavg()],
    }
    if options.verify or restarts:
        result.update(verify(record_file, emitted_calls))
        # With restarts the status counts only the last worker: the files are the truth.
        result["written"] = result["verify_distinct"]
        result["unaccounted"] = emitted - result["verify_lines"] - lost_agent
    print(json.dumps(result), flush=True)
    return 0


def verify(record_file, runs):
    """Every sequence number (the `len` field) at most once; how many distinct ones."""
    seen = bytearray(runs)
    duplicates = lines = bad = 0
    for path in sorted(glob.glob(record_file + "*")):
        with open(path, "rb") as handle:
            for line in handle:
                lines += 1
                try:
                    sequence = json.loads(line)["len"]
                except (ValueError, KeyError):
                    bad += 1
                    continue
                if seen[sequence]:
                    duplicates += 1
                seen[sequence] = 1
    return {"verify_lines": lines, "verify_distinct": sum(seen), "verify_duplicates": duplicates,
            "verify_unparsable": bad}


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rate", type=int, default=1_000_000, help="records/s offered (%(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="generation time (%(default)s)")
    parser.add_argument("--ring-mb", type=int, default=16, help="ring buffer size in MiB (%(default)s)")
    parser.add_argument("--fields", default="all", help="all, base, or a comma list (%(default)s)")
    parser.add_argument("--max-size", type=int, default=1 << 30, help="rotation size in bytes (%(default)s)")
    parser.add_argument("--keep", type=int, default=2, help="rotated files kept (%(default)s)")
    parser.add_argument("--out", default=os.path.join(REPO, ".tmp", "bench-agent"),
                        help="work directory, emptied first (%(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait for the agent to catch up after generation (%(default)s)")
    parser.add_argument("--verify", action="store_true", help="read the output back: each record once")
    parser.add_argument("--kill-every", type=float, default=0.0,
                        help="SIGKILL the agent every this many seconds of generation and restart it")
    parser.add_argument("--failpoint", default=None,
                        help="BPFLEET_AGENT_FAILPOINT for the agents started during generation, e.g. after-write:3")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra agent option (repeatable)")
    parser.add_argument("--json", action="store_true", help="one line of JSON instead of indented")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    options = parse_arguments(argv)
    if options.inner:
        return inner(options)
    if os.geteuid() != 0:
        raise SystemExit("needs root (bpf(2), a private mount namespace with bpffs)")
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@"', HOST_PYTHON, os.path.abspath(__file__),
               "--inner"] + argv
    with tempfile.TemporaryFile() as errors:
        process = subprocess.run(command, stdout=subprocess.PIPE, stderr=errors, text=True, check=False)
        if process.returncode != 0:
            errors.seek(0)
            sys.stderr.write(errors.read().decode("utf-8", "replace")[-4000:])
            return process.returncode
    result = json.loads(process.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=None if options.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
