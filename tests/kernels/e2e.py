"""The end-to-end check of one kernel, driven from the controller with ansible-playbook over SSH.

On the target host (a qemu guest of the matrix, or a lab namespace host for the machine's own
kernel): the host role, facts (probed features), the lab-edge policy (deny list + header
log), real UDP from a lab host's allowed and denied addresses, drops counted and header
records written, an idempotent re-run (changed=0, nothing compiled), then `xdp_mode: native`.
A kernel that lacks a required feature must be refused cleanly: the policy fails before
anything is changed on the host, with a message naming the feature.

check() returns a result dict (also used for the matrix table) and raises CheckFailed, with
the partial result attached, when the kernel does not pass.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
PROBE = REPO / "tests" / "fleet" / "probe.py"
COLLECTIONS = REPO / ".tmp" / "collections"
POLICY = yaml.safe_load((REPO / "playbooks" / "policies" / "lab-edge.yml").read_text())
PORT = 47011
COUNT = 10


class CheckFailed(AssertionError):
    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


def progress(message: str) -> None:
    print(f"[kernels {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Ansible:
    """ansible-playbook over an inventory: the lab fleet's hosts plus any guests."""

    def __init__(self, lab_inventory: Path, guests: dict, workdir: Path) -> None:
        self.workdir = workdir
        self.plays = 0
        inventory = yaml.safe_load(lab_inventory.read_text())
        if guests:
            inventory["all"]["children"]["kernel_guests"] = {"hosts": guests}
        self.inventory = workdir / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump(inventory, sort_keys=False))

    def play(self, host: str, tasks: list, ignore_errors: bool = False, timeout: float = 1800) -> tuple:
        """Run tasks on host; return (list of registered results, recap dict, stdout)."""
        names, play_tasks = [], []
        for index, task in enumerate(tasks):
            task = dict(task)
            if "ansible.builtin.include_role" not in task:
                task["register"] = f"kvm_result_{index}"
                names.append(task["register"])
                if ignore_errors:
                    task["ignore_errors"] = True
            play_tasks.append(task)
        dump = self.workdir / f"results-{host}.json"
        dump.unlink(missing_ok=True)
        play_tasks.append({
            "name": "dump results",
            "ansible.builtin.copy": {
                "content": "{{ [%s] | to_json }}" % ", ".join(f"{n} | default(None)" for n in names),
                "dest": str(dump), "mode": "0600"},
            "delegate_to": "localhost", "check_mode": False, "diff": False, "changed_when": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        })
        play = [{"name": "kernel matrix", "hosts": host, "gather_facts": False, "tasks": play_tasks}]
        path = self.workdir / "play.yml"
        path.write_text(yaml.safe_dump(play, sort_keys=False))
        venv_bin = Path(sys.executable).parent
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_HOST_KEY_CHECKING="false",
                   ANSIBLE_PIPELINING="true", ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_TIMEOUT="60",
                   PATH=f"{venv_bin}:{os.environ.get('PATH', '')}")
        playbook = shutil.which("ansible-playbook", path=env["PATH"]) or "ansible-playbook"
        result = subprocess.run([playbook, "-i", str(self.inventory), str(path)], capture_output=True, text=True,
                                timeout=timeout, env=env, check=False)
        self.plays += 1
        (self.workdir / f"ansible-{host}-{self.plays:02d}.log").write_text(result.stdout + result.stderr)
        recap = {}
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", result.stdout, re.M)
        if match:
            recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
        results = json.loads(dump.read_text()) if dump.exists() else None
        if result.returncode != 0 and not (ignore_errors and results is not None):
            raise AssertionError(f"ansible-playbook failed (rc={result.returncode}):\n{result.stdout[-5000:]}\n"
                                 f"{result.stderr[-2000:]}")
        return results, recap, result.stdout


def policy_task(policy: dict) -> dict:
    return {"name": "policy", "bpfleet.core.policy": {"policy": policy}}


def facts_task() -> dict:
    return {"name": "facts", "bpfleet.core.bpfleet_facts": {}}


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def check(ansible: Ansible, label: str, target: str, target_ipv4: str, run_on_target: Callable[[str], str],
          copy_to_target: Callable[[Path, str], None], sender: str, sender_vars: dict, lab_name: str,
          headers: str = "exact", try_native: bool = True, rerun_role: bool = True) -> dict:
    """The end-to-end check of target's kernel. run_on_target(shell) returns stdout (raises on failure)."""
    result: dict = {"label": label, "target": target, "timings": {}, "status": "running", "steps": []}
    timings = result["timings"]

    def phase(name: str, started: float) -> None:
        timings[name] = round(time.monotonic() - started, 1)
        progress(f"test {label}: {name} done in {timings[name]:.0f} s")

    def fail(message: str) -> CheckFailed:
        result["status"] = "fail"
        result["error"] = message
        return CheckFailed(f"{label}: {message}", result)

    try:
        # 1. The host role, then the facts with the probed kernel features.
        started = time.monotonic()
        _result, recap, _output = ansible.play(target, [{"name": "host role", "ansible.builtin.include_role": {
            "name": "bpfleet.core.host"}, "vars": {"bpfleet_host_headers": headers}}])
        phase("host_role", started)
        started = time.monotonic()
        facts_result, _recap, _output = ansible.play(target, [facts_task()])
        kernel = facts_result[0]["ansible_facts"]["bpfleet"]["kernel"]
        phase("facts", started)
        result["kernel"] = kernel
        result["release"] = kernel.get("release")
        result["bcc_version"] = kernel.get("bcc_version")
        result["headers"] = kernel.get("headers")
        features = kernel.get("features") or {}
        if not features:
            raise fail("facts report no probed kernel features (ansible_facts.bpfleet.kernel.features)")
        result["features"] = features

        # 2. A kernel without a required feature: the policy must refuse it before any change.
        if kernel.get("unsupported"):
            started = time.monotonic()
            outcome, _recap, _output = ansible.play(target, [policy_task(POLICY)], ignore_errors=True)
            phase("policy_refused", started)
            message = (outcome[0] or {}).get("msg", "")
            result["refusal"] = message
            pinned = run_on_target("test -e /sys/fs/bpf/bpfleet/lab-edge && echo yes || echo no").strip()
            if not (outcome[0] or {}).get("failed") or pinned != "no":
                raise fail(f"unsupported kernel was not refused cleanly (failed={outcome[0].get('failed')}, "
                           f"pins={pinned}): {message}")
            result["status"] = "refused"
            return result

        # 3. The policy: compile, verify, attach, log.
        started = time.monotonic()
        outcome, _recap, _output = ansible.play(target, [policy_task(POLICY)])
        applied = outcome[0]
        phase("policy_apply", started)
        if not (applied.get("changed") and applied.get("compiled")):
            raise fail(f"first apply did not compile and change: {applied}")

        # 4. Real traffic from the sender's allowed and denied addresses.
        started = time.monotonic()
        received = send_traffic(run_on_target, copy_to_target, lab_name, sender, sender_vars, target_ipv4)
        result["received"] = received
        phase("traffic", started)
        allowed, denied = sender_vars["lab_ipv4"], sender_vars["lab_ipv4_alt"]
        if received.get(allowed, 0) != COUNT or received.get(denied, 0) != 0:
            raise fail(f"traffic: expected {COUNT} from {allowed} and 0 from {denied}, received {received}")

        # 5. Drops counted, header records written.
        started = time.monotonic()
        records: list = []

        def records_arrived() -> bool:
            text = run_on_target("cat /var/log/bpfleet/headers.jsonl 2>/dev/null || true")
            records[:] = [json.loads(line) for line in text.splitlines() if line.strip()]
            return any(r.get("src_ip") == denied and r.get("action") == "drop" for r in records) and \
                any(r.get("src_ip") == allowed and r.get("action") == "pass" for r in records)

        arrived = wait_for(records_arrived, 60, 2)
        facts_result, _recap, _output = ansible.play(target, [facts_task()])
        policy_facts = facts_result[0]["ansible_facts"]["bpfleet"]["policies"]["lab-edge"]
        counters = policy_facts["counters"]
        result["dropped"] = counters.get("dropped")
        result["deny_rule_packets"] = counters["rules"]["deny"]["packets"]
        result["records"] = {
            "total": len(records),
            "denied_dropped": sum(1 for r in records if r.get("src_ip") == denied and r.get("action") == "drop"),
            "allowed_passed": sum(1 for r in records if r.get("src_ip") == allowed and r.get("action") == "pass"),
            "written": policy_facts["log"].get("records_written"),
        }
        result["attachments"] = [{k: a.get(k) for k in ("iface", "hook", "mode", "attached", "ok")}
                                 for a in policy_facts["attachments"]]
        phase("drops_records", started)
        if result["deny_rule_packets"] < COUNT:
            raise fail(f"the deny rule counted {result['deny_rule_packets']} packets, expected >= {COUNT}")
        if not arrived:
            raise fail(f"header records missing: {result['records']}")
        if not policy_facts.get("healthy"):
            raise fail(f"policy not healthy: drift {policy_facts.get('drift')}")

        # 6. Idempotent re-run of the role and the policy: changed=0, nothing compiled. (The
        # role's re-run is most of a guest's time under TCG; rerun_role=False re-runs the policy.)
        started = time.monotonic()
        role = [{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"},
                 "vars": {"bpfleet_host_headers": headers}}] if rerun_role else []
        outcome, recap, _output = ansible.play(target, [*role, policy_task(POLICY)])
        phase("rerun" if rerun_role else "rerun_policy", started)
        result["rerun"] = {"changed": recap.get("changed"), "compiled": outcome[-1].get("compiled"),
                           "role": rerun_role}
        if recap.get("changed") != 0 or outcome[-1].get("compiled") or outcome[-1].get("changed"):
            raise fail(f"re-run not idempotent: recap {recap}, policy {outcome[-1]}")

        # 7. Native XDP on this host's NIC driver: recorded, not required.
        if try_native:
            started = time.monotonic()
            native = copy.deepcopy(POLICY)
            native["xdp_mode"] = "native"
            outcome, _recap, _output = ansible.play(target, [policy_task(native), facts_task()], ignore_errors=True)
            phase("native_xdp", started)
            if outcome[0] and outcome[0].get("failed"):
                result["native_xdp"] = {"attached": False, "error": outcome[0].get("msg")}
            else:
                attachments = outcome[1]["ansible_facts"]["bpfleet"]["policies"]["lab-edge"]["attachments"]
                xdp = [a for a in attachments if a.get("hook") == "xdp"]
                result["native_xdp"] = {"attached": bool(xdp and xdp[0].get("mode") == "native" and xdp[0].get("ok")),
                                        "mode": xdp[0].get("mode") if xdp else None}
        result["status"] = "pass"
        return result
    except CheckFailed:
        raise
    except Exception as exc:  # any step's failure: keep what was measured so far
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    finally:
        result["timings"]["total"] = round(sum(v for k, v in timings.items() if k != "total"), 1)


def send_traffic(run_on_target, copy_to_target, lab_name: str, sender: str, sender_vars: dict,
                 target_ipv4: str) -> dict:
    """COUNT UDP datagrams from each of the sender's allowed and denied addresses; return received per source."""
    copy_to_target(PROBE, "/root/bpfleet-probe.py")
    out = "/root/bpfleet-probe-out.json"
    run_on_target(f"rm -f {out}; setsid nohup /usr/bin/python3 /root/bpfleet-probe.py listen --proto udp "
                  f"--port {PORT} --duration 15 --stop-after {2 * COUNT} --out {out} >/dev/null 2>&1 < /dev/null &")
    if not wait_for(lambda: run_on_target(f"test -e {out} && echo ready || true").strip() == "ready", 60, 1):
        raise AssertionError("the listener on the target did not start within 60 s")

    def send(src: str) -> None:
        subprocess.run([sys.executable, str(LAB), "exec", "--name", lab_name, "--host", sender, "--",
                        "/usr/bin/python3", str(PROBE), "send", "--proto", "udp", "--src", src, "--dst",
                        target_ipv4, "--port", str(PORT), "--count", str(COUNT), "--interval", "0.05"],
                       check=True, capture_output=True, timeout=60)

    send(sender_vars["lab_ipv4"])
    send(sender_vars["lab_ipv4_alt"])
    # The listener writes its counts when its --duration ends (or all 2 x COUNT arrived).
    data: dict = {}

    def done() -> bool:
        text = run_on_target(f"cat {out} 2>/dev/null || true").strip()
        data.update(json.loads(text) if text else {})
        return bool(data.get("done"))

    if not wait_for(done, 60, 2):
        raise AssertionError(f"the listener on the target did not finish: {data}")
    return data.get("received", {})


def new_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
