# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The suite cannot go green without testing: what scripts/test.sh, .ci/run and
tests/conftest.py do with skips, unreachable hosts, empty selections and the golden switch.

These run scripts/test.sh itself (bootstrap without apt, then one cheap stage) and pytest on
a scratch directory with the repository's tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_SH = REPO / "scripts" / "test.sh"


def run_test_sh(env_extra: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BPFLEET_") and k not in ("CI", "PYTEST_ADDOPTS")}
    env.update(BPFLEET_SKIP_APT="1", **env_extra)
    result = subprocess.run(["bash", str(TEST_SH)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    result.output = result.stdout + result.stderr
    return result


def stage_line(output: str, stage: str) -> str:
    lines = [line for line in output.splitlines() if line.split()[:1] == [stage] and len(line.split()) >= 2]
    assert lines, output[-3000:]
    return lines[-1]


@pytest.mark.parametrize("ci", ["true", ""])
def test_host_stage_fails_when_a_host_is_unreachable(tmp_path, ci):
    """ansible-playbook exits 3 for an unreachable host: that is a failed stage, never a skip."""
    if shutil.which("ssh") is None:
        pytest.fail("ssh (openssh-client) is missing: scripts/bootstrap.sh installs it")
    inventory = tmp_path / "inventory.ini"
    # Nothing listens on port 9 of the loopback: the connection is refused at once.
    inventory.write_text("unreachable ansible_host=127.0.0.1 ansible_port=9 ansible_connection=ssh "
                         "ansible_user=root ansible_ssh_common_args='-o ConnectTimeout=5 -o BatchMode=yes'\n")
    result = run_test_sh({"CI": ci, "BPFLEET_TEST_STAGES": "host", "BPFLEET_HOST_STAGE_INVENTORY": str(inventory)})
    assert "UNREACHABLE" in result.output, result.output[-4000:]
    assert result.returncode != 0, result.output[-4000:]
    assert stage_line(result.output, "host").split()[1] == "FAIL", result.output[-2000:]
    assert "stages: 1 passed, 1 failed, 0 skipped" in result.output


def test_an_empty_scenario_list_fails_the_molecule_stage():
    result = run_test_sh({"BPFLEET_TEST_STAGES": "molecule", "BPFLEET_MOLECULE_SCENARIOS": " "})
    assert result.returncode != 0, result.output[-3000:]
    assert stage_line(result.output, "molecule").split()[1] == "FAIL"
    assert "selects no scenario" in result.output


def test_ci_refuses_to_rewrite_golden_files():
    result = run_test_sh({"CI": "true", "BPFLEET_TEST_STAGES": "ruff", "BPFLEET_UPDATE_GOLDEN": "1"}, timeout=60)
    assert result.returncode == 2, result.output
    assert "BPFLEET_UPDATE_GOLDEN" in result.output


def test_ci_run_fixes_stages_scenarios_and_the_golden_switch():
    """.ci/run must not take these from the environment it runs in: it sets or clears each."""
    text = (REPO / ".ci" / "run").read_text()
    exported = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            exported[name] = value.strip('"')
    assert exported["CI"] == "true"
    all_stages = re.search(r"^ALL_STAGES=\((.*)\)$", TEST_SH.read_text(), re.M).group(1).split()
    assert exported["BPFLEET_TEST_STAGES"].split() == all_stages
    assert {"host", "unit", "integration", "molecule", "mutation"} <= set(all_stages)
    scenarios = exported["BPFLEET_MOLECULE_SCENARIOS"].split()
    assert sorted(scenarios) == sorted(p.parent.name for p in (REPO / "extensions" / "molecule").glob("*/molecule.yml"))
    unset = [line for line in text.splitlines() if line.startswith("unset ")]
    assert unset and {"BPFLEET_UPDATE_GOLDEN", "BPFLEET_SKIP_APT", "BPFLEET_HOST_STAGE_INVENTORY"} <= set(
        unset[0].split()[1:])
    assert text.rstrip().splitlines()[-1] == "exec bash scripts/test.sh"


SCRATCH_TESTS = textwrap.dedent("""
    import pytest

    def test_runs():
        pass

    def test_needs_the_kernel():
        pytest.skip("no kernel headers for BCC")

    @pytest.fixture(scope="module")
    def lab():
        pytest.skip("needs root: the lab fleet creates namespaces")

    def test_on_the_fleet(lab):
        pass

    @pytest.mark.ci_may_skip("declared")
    def test_declared():
        pytest.skip("allowed to skip")
""")


def scratch_pytest(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    tests = tmp_path / "tests"
    (tests / "integration").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "integration" / "test_scratch.py").write_text(SCRATCH_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["CI"] = ci
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    result.output = result.stdout + result.stderr
    return result


def test_under_ci_a_skipped_test_fails_with_its_reason(tmp_path):
    result = scratch_pytest(tmp_path, "true")
    assert result.returncode == 1, result.output
    assert "FAILED tests/integration/test_scratch.py::test_needs_the_kernel - CI=true: this test skipped instead " \
           "of running: no kernel headers for BCC" in result.output, result.output
    assert "ERROR tests/integration/test_scratch.py::test_on_the_fleet - CI=true: this test skipped instead of " \
           "running: needs root: the lab fleet creates namespaces" in result.output, result.output
    assert "1 failed, 1 passed, 1 skipped, 1 error" in result.output, result.output


def test_outside_ci_skips_are_allowed_and_loud(tmp_path):
    result = scratch_pytest(tmp_path, "")
    assert result.returncode == 0, result.output
    assert "3 test(s) SKIPPED" in result.output, result.output
    assert "SKIPPED [1] tests/integration/test_scratch.py:8: no kernel headers for BCC" in result.output
