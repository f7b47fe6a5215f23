"""Shared pieces of the benchmarks: lab fleets, namespaces, Ansible runs, CPU and statistics.

Everything here drives real things: lab hosts from tests/fleet/bpfleet_lab.py, commands run
inside their namespaces, playbooks over real SSH. Nothing is simulated.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
COLLECTIONS = REPO / ".tmp" / "collections"
VENV_BIN = Path(sys.executable).parent
HOST_PYTHON = "/usr/bin/python3"
TAG = os.environ.get("BPFLEET_LAB_TAG", "")

sys.path.insert(0, str(REPO / "tests" / "fleet"))
import blast  # noqa: E402


class BenchError(Exception):
    """A benchmark could not run; the message says why."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv, *, check=True, timeout=600, input=None, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, input=input,
                            env=env, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))[:300]} failed (rc={result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def summary(values: list[float]) -> dict:
    """min, median and max of repeated measurements (and the raw values)."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values),
            "values": values}


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(tid: int) -> int:
    """Nanoseconds a thread has run (schedstat: exact, unlike the tick-based /proc/PID/stat)."""
    with open(f"/proc/{tid}/schedstat") as handle:
        return int(handle.read().split()[0])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, summed over its threads."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    with open("/proc/cpuinfo") as handle:
        models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return {"nproc": os.cpu_count(), "kernel": os.uname().release, "cpu": models[0] if models else "?",
            "loadavg": [float(v) for v in load], "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "flood_mode": flood_mode(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


# --- deny lists ------------------------------------------------------------------------------

MAX_LIST = 1000000
_FIRST_BLOCK, _BLOCKS = 0x010000, 0x7F0000 - 0x010000   # the /24s of 1.0.0.0-126.255.255.255
_STRIDE = 5000011   # coprime with _BLOCKS (2**17 * 3**2 * 7): i -> block is a permutation


def _prefix(index: int) -> str:
    """The index-th prefix of the fixed sequence: distinct /24 blocks scattered over the range."""
    block = _FIRST_BLOCK + (index * _STRIDE + 12345) % _BLOCKS
    mix = (index * 2654435761) & 0xFFFFFFFF
    kind = index % 4
    if kind == 0:
        address, length = block << 8, 24
    elif kind == 1:
        address, length = (block << 8) + ((mix >> 8) & 15) * 16, 28
    else:
        address, length = (block << 8) + 1 + (mix >> 12) % 254, 32
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}/{length}"


def deny_list(size: int, denied: str) -> list[str]:
    """`size` disjoint IPv4 prefixes (a quarter /24, a quarter /28, half /32) ending with denied/32.

    Deterministic (fixed seed), drawn from 1.0.0.0-126.255.255.255 so they never touch the lab
    ranges; every filter gets the same list, and a longer list contains every shorter one (so
    growing a list is only additions). The denied source comes last: worst case for a linear
    rule list, no difference for the others.
    """
    if not 1 <= size <= MAX_LIST:
        raise ValueError(f"list size {size} not within 1..{MAX_LIST}")
    return [_prefix(index) for index in range(size - 1)] + [f"{denied}/32"]


# --- lab fleets ------------------------------------------------------------------------------

class Fleet:
    """A lab fleet (bpfleet_lab.py) with an inventory, namespaces and Ansible runs over SSH."""

    def __init__(self, name: str, hosts: int, workdir: Path) -> None:
        self.name = name
        self.count = hosts
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.inventory = workdir / "inventory.yml"
        started = time.monotonic()
        self.lab("up", "--name", name, "--hosts", str(hosts), "--inventory", str(self.inventory), timeout=300)
        self.up_seconds = time.monotonic() - started
        self.hosts = list(yaml.safe_load(self.inventory.read_text())["all"]["children"]["bpfleet_lab"]["hosts"])

    def lab(self, *args: str, timeout: float = 180) -> str:
        return run([sys.executable, LAB, *args], timeout=timeout).stdout

    def down(self) -> None:
        run([sys.executable, LAB, "down", "--name", self.name], check=False, timeout=180)

    def netns(self, host: str) -> str:
        return f"{os.environ.get('BPFLEET_LAB_PREFIX', 'bpfl')}-{self.name}-{host}"

    def ns(self, host: str, *argv, check=True, timeout=600, input=None) -> subprocess.CompletedProcess:
        """A command in the host's network namespace only (fast; sees the machine's files)."""
        return run(["ip", "netns", "exec", self.netns(host), *argv], check=check, timeout=timeout, input=input)

    def exec(self, host: str, *argv, check=True, timeout=600, input=None) -> subprocess.CompletedProcess:
        """A command inside all of the host's namespaces (its own bpffs, /var/log, /run)."""
        return run([sys.executable, LAB, "exec", "--name", self.name, "--host", host, "--", *argv], check=check,
                   timeout=timeout, input=input)

    def popen_exec(self, host: str, *argv, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(LAB), "exec", "--name", self.name, "--host", host, "--",
                                 *map(str, argv)], **kwargs)

    def playbook(self, plays: list, *, limit: str | None = None, forks: int = 20, extra: list | None = None) -> dict:
        """Run plays; every task is registered and dumped, so callers read real module results.

        Returns {"seconds": wall time, "results": {host: [task results]}}.
        """
        results_dir = self.workdir / "results"
        shutil.rmtree(results_dir, ignore_errors=True)
        results_dir.mkdir()
        out = []
        for play_index, play in enumerate(plays):
            play = dict(play)
            names = []
            tasks = []
            for index, task in enumerate(play.get("tasks", [])):
                task = dict(task)
                task.setdefault("register", f"bench_{play_index}_{index}")
                names.append(task["register"])
                tasks.append(task)
            tasks.append({
                "name": "dump results",
                "ansible.builtin.copy": {
                    "content": "{{ [%s] | to_json }}" % ", ".join("%s | default(None)" % n for n in names),
                    "dest": "%s/%d-{{ inventory_hostname }}.json" % (results_dir, play_index), "mode": "0600"},
                "delegate_to": "localhost", "check_mode": False, "diff": False,
                "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
            })
            play["tasks"] = tasks
            play.setdefault("gather_facts", False)
            out.append(play)
        path = self.workdir / "play.yml"
        path.write_text(yaml.safe_dump(out, sort_keys=False))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_HOST_KEY_CHECKING="false",
                   PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", ANSIBLE_RETRY_FILES_ENABLED="false",
                   ANSIBLE_FORKS=str(forks))
        argv = [VENV_BIN / "ansible-playbook", "-i", self.inventory, path, *(extra or [])]
        if limit:
            argv += ["--limit", limit]
        started = time.monotonic()
        result = run(argv, env=env, timeout=1200, check=False)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise BenchError(f"playbook failed:\n{result.stdout[-5000:]}\n{result.stderr[-2000:]}")
        outcome: dict = {}
        for dump in sorted(results_dir.glob("*.json")):
            outcome.setdefault(dump.stem.split("-", 1)[1], []).extend(json.loads(dump.read_text()))
        return {"seconds": seconds, "results": outcome}


def blast_binary() -> Path:
    return blast.binary()


_flood_mode = None


def flood_mode() -> str:
    """The traffic generator's mode on this kernel, chosen by probing, never assumed: XDP live
    frames (about 1.1 M pps a core) where BPF_PROG_TEST_RUN allows them, else AF_PACKET with
    PACKET_QDISC_BYPASS and sendmmsg (about 0.5 M). 6.18.44-fc-v1300 refuses live frames (EPERM)."""
    global _flood_mode
    if _flood_mode is None:
        if str(COLLECTIONS) not in sys.path:
            sys.path.insert(0, str(COLLECTIONS))
        from ansible_collections.bpfleet.core.plugins.module_utils import _features

        available, reason = _features.PROBES_BY_KIND["live_frames"]()
        _flood_mode = "xdp" if available else "packet"
        log("traffic generator: --mode %s (%s)" % (
            _flood_mode, "XDP live frames available" if available else "no XDP live frames: " + reason))
    return _flood_mode
