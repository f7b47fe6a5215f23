"""Shared fixtures of the integration tests: a real lab fleet reached over real SSH.

Each test module brings up its own fleet with tests/fleet/bpfleet_lab.py and tears it down
at the end. Ansible runs from this venv against the fleet's inventory, exactly as an
operator would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
PROBE = REPO / "tests" / "fleet" / "probe.py"
COLLECTIONS = REPO / ".tmp" / "collections"
VENV_BIN = Path(sys.executable).parent


def missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the lab fleet creates namespaces and an sshd per host"
    for tool in ("sshd", "nc", "ip", "tc"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"{tool} not found (scripts/bootstrap.sh installs it)"
    if shutil.which("ansible-playbook", path=str(VENV_BIN)) is None:
        return "ansible-playbook not in this venv (scripts/bootstrap.sh installs it)"
    if subprocess.run(["/usr/bin/python3", "-c", "import bcc"], capture_output=True, check=False).returncode != 0:
        return "BCC is not importable by /usr/bin/python3 (apt install python3-bpfcc)"
    return None


class Lab:
    def __init__(self, name: str, hosts: int, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.inventory = tmp / "inventory.yml"
        self._lab("up", "--name", name, "--hosts", str(hosts), "--inventory", str(self.inventory))
        group = yaml.safe_load(self.inventory.read_text())["all"]["children"]["bpfleet_lab"]
        self.hosts = group["hosts"]

    def _lab(self, *args: str) -> str:
        result = subprocess.run([sys.executable, str(LAB), *args], capture_output=True, text=True, timeout=180,
                                check=False)
        assert result.returncode == 0, f"bpfleet_lab.py {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def down(self) -> None:
        self._lab("down", "--name", self.name)

    def exec(self, host: str, *argv: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command inside a host's namespaces (for looking and for sabotage, not for the product)."""
        result = subprocess.run([sys.executable, str(LAB), "exec", "--name", self.name, "--host", host, "--", *argv],
                                capture_output=True, text=True, timeout=120, env=env, check=False)
        if check:
            assert result.returncode == 0, f"exec on {host}: {argv} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def playbook(self, tasks: list, hosts: str = "all", check: bool = False, extra: list | None = None,
                 expect_failure: bool = False) -> dict:
        """Run one play over SSH; return {host: [result of each task, in order]}.

        Each task's result is registered and written to a JSON file on the controller by a
        last task, so tests read real module results (ansible-core ships no JSON stdout
        callback). With expect_failure, a failing task does not stop the play.
        """
        names = []
        play_tasks = []
        for index, task in enumerate(tasks):
            task = dict(task)
            task["register"] = "bpfleet_it_%d" % index
            names.append(task["register"])
            if expect_failure and "ansible.builtin.include_role" not in task:
                task["ignore_errors"] = True
            play_tasks.append(task)
        results_dir = self.tmp / "results"
        shutil.rmtree(results_dir, ignore_errors=True)
        results_dir.mkdir()
        play_tasks.append({
            "name": "dump results",
            "ansible.builtin.copy": {
                "content": "{{ [%s] | to_json }}" % ", ".join("%s | default(None)" % n for n in names),
                "dest": "%s/{{ inventory_hostname }}.json" % results_dir,
                "mode": "0600",
            },
            "delegate_to": "localhost",
            "check_mode": False,
            "diff": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        })
        play = [{"name": "integration", "hosts": hosts, "gather_facts": False, "tasks": play_tasks}]
        path = self.tmp / "play.yml"
        path.write_text(yaml.safe_dump(play, sort_keys=False))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_HOST_KEY_CHECKING="false",
                   PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", ANSIBLE_RETRY_FILES_ENABLED="false")
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), str(path)]
        if check:
            argv.append("--check")
        argv += extra or []
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
        assert result.returncode == 0, f"playbook failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
        outcome = {}
        for dump in results_dir.glob("*.json"):
            outcome[dump.stem] = json.loads(dump.read_text())
        failed = [(host, r.get("msg")) for host, results in outcome.items() for r in results if r and r.get("failed")]
        if expect_failure:
            assert failed, f"a task should have failed:\n{result.stdout[-4000:]}"
        else:
            assert not failed, f"tasks failed: {failed}"
        return outcome

    def udp_delivered(self, sender: str, src: str, receiver: str, dst: str, count: int = 10) -> int:
        """Send `count` UDP datagrams from sender (bound to src) to receiver; return how many arrived."""
        port = "47001"
        out = f"/tmp/itest-{self.name}-{receiver}.json"
        listener = subprocess.Popen(
            [sys.executable, str(LAB), "exec", "--name", self.name, "--host", receiver, "--",
             "/usr/bin/python3", str(PROBE), "listen", "--proto", "udp", "--port", port, "--duration", "4",
             "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.exec(receiver, "sh", "-c", f"for i in $(seq 50); do ss -Hlun sport = :{port} | grep -q . && exit 0;"
                                            " sleep 0.1; done; exit 1")
            self.exec(sender, "/usr/bin/python3", str(PROBE), "send", "--proto", "udp", "--src", src, "--dst", dst,
                      "--port", port, "--count", str(count), "--interval", "0.01")
        finally:
            listener.wait(timeout=30)
        with open(out) as handle:
            return json.load(handle)["received"].get(src, 0)


@pytest.fixture(scope="module")
def lab(request):
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    # BPFLEET_LAB_TAG keeps the fleets of two checkouts (git worktrees) testing at once apart.
    tag = os.environ.get("BPFLEET_LAB_TAG", "")
    name = tag + "it" + request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")[:6].replace("_", "")
    tmp = Path(tempfile.mkdtemp(prefix=f"bpfleet-{name}-"))
    fleet = Lab(name, getattr(request.module, "LAB_HOSTS", 3), tmp)
    try:
        yield fleet
    finally:
        fleet.down()
        shutil.rmtree(tmp, ignore_errors=True)
