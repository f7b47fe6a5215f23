"""playbooks/validate.yml, run by the real ansible-playbook: the lint of a policy repository.

Controller only: no fleet, no root, no BCC. The collection is reached through a collection
path made in a temporary directory, as a policy repository that installed it would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.bpfleet.core.plugins.filter.policy_validate import policy_validate

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "validate.yml"

pytestmark = pytest.mark.integration

GOOD_EDGE = """\
name: b-edge
interfaces: [eth0, eth1]
filter:
  deny:
    - 203.0.113.0/24
    - {cidr: "2001:db8:bad::/48", comment: abuse}
    - file: lists/scanners.txt
"""
SCANNERS = "# scanners\n192.0.2.0/24\n"
GOOD_OFFICE = """\
name: d-office
interfaces: [ens3]
filter:
  default: deny
"""
# Several problems in one file: every one must be reported.
BAD_CIDRS = """\
name: a-bad
interfaces: [eth0]
filter:
  deny:
    - 203.0.113.0/24
    - 10.0.0.300/24
  deny_list: []
"""
BAD_NAME_AND_IFACE = """\
name: Bad Name
interfaces: [eth0, lo]
xdp_mode: fast
"""


def ansible_playbook() -> str:
    for candidate in (REPO / ".venv" / "bin" / "ansible-playbook", Path(sys.executable).parent / "ansible-playbook"):
        if candidate.exists():
            return str(candidate)
    raise AssertionError("ansible-playbook not found in the venv: run scripts/bootstrap.sh")


def run(tmp_path: Path, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    collections = tmp_path / "collections"
    link = collections / "ansible_collections" / "bpfleet" / "core"
    if not link.exists():
        link.parent.mkdir(parents=True)
        link.symlink_to(REPO)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="false")
    env.pop("ANSIBLE_CONFIG", None)
    result = subprocess.run([ansible_playbook(), playbook, *extra], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    result.output = result.stdout + result.stderr
    return result


def expected_ok_line(path: Path, name: str) -> str:
    """The line the playbook must print, with the digests the filter computes in this process."""
    checked = policy_validate(str(path))
    assert checked["valid"], checked["problems"]
    return "OK   %s: %s source_digest=%s maps_digest=%s" % (
        path.name, name, checked["source_digest"], checked["maps_digest"])


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    (directory / "lists").mkdir(parents=True)
    (directory / "lists" / "scanners.txt").write_text(SCANNERS)
    (directory / "b-edge.yml").write_text(GOOD_EDGE)
    (directory / "d-office.yml").write_text(GOOD_OFFICE)
    # Not a policy: files in hidden directories (CI configuration) are not linted.
    (directory / ".ci").mkdir()
    (directory / ".ci" / "workflow.yml").write_text("on: push\n")
    return directory


def test_bad_policies_fail_after_every_file_is_checked(tmp_path, policies):
    # a-bad.yml sorts first: the good files after it must still be checked and reported.
    (policies / "a-bad.yml").write_text(BAD_CIDRS)
    (policies / "c-bad.yml").write_text(BAD_NAME_AND_IFACE)
    result = run(tmp_path, str(PLAYBOOK), "-e", "policy_dir=%s" % policies)
    out = result.output
    assert result.returncode == 2, out

    assert "FAIL a-bad.yml: 2 problems: " in out
    assert "filter.deny_list: unknown field (did you mean 'deny'?)" in out
    assert "filter.deny[1]: not an IP network: 10.0.0.300/24" in out
    assert "FAIL c-bad.yml: 3 problems: " in out
    assert "name: must be 1-48 characters" in out
    assert "interfaces[1]: the loopback interface cannot carry a bpfleet policy" in out
    assert "xdp_mode: must be one of auto, native, generic, got 'fast'" in out

    assert expected_ok_line(policies / "b-edge.yml", "b-edge") in out
    assert expected_ok_line(policies / "d-office.yml", "d-office") in out
    assert "(warning: filter.default: default deny with an empty allow list drops all IP traffic)" in out

    assert "2 of 4 policy files are invalid: a-bad.yml, c-bad.yml" in out
    assert "workflow.yml" not in out


def test_good_policies_pass_through_the_collection_playbook(tmp_path, policies):
    result = run(tmp_path, "bpfleet.core.validate", "-e", "policy_dir=%s" % policies)
    assert result.returncode == 0, result.output
    assert expected_ok_line(policies / "b-edge.yml", "b-edge") in result.output
    assert expected_ok_line(policies / "d-office.yml", "d-office") in result.output
    assert "FAIL" not in result.output


def test_the_repository_policies_pass_with_their_golden_digests(tmp_path):
    """The digests the playbook prints for playbooks/policies/ are those in tests/unit/golden,
    reviewed and committed, not recomputed by the code under test."""
    directory = tmp_path / "repo-policies"
    shutil.copytree(REPO / "playbooks" / "policies", directory)
    result = run(tmp_path, str(PLAYBOOK), "-e", "policy_dir=%s" % directory)
    assert result.returncode == 0, result.output
    policies = sorted(directory.glob("*.yml"))
    assert policies
    for path in policies:
        golden = json.loads((REPO / "tests" / "unit" / "golden" / (path.stem + ".digests.json")).read_text())
        name = yaml.safe_load(path.read_text())["name"]
        line = "OK   %s: %s source_digest=%s maps_digest=%s" % (path.name, name, golden["source_digest"],
                                                               golden["maps_digest"])
        assert line in result.output, result.output


def test_policy_files_list_reports_a_missing_file(tmp_path, policies):
    files = "policies/b-edge.yml,policies/missing.yml"
    result = run(tmp_path, str(PLAYBOOK), "-e", "policy_files=%s" % files)
    assert result.returncode == 2, result.output
    assert "OK   policies/b-edge.yml: b-edge " in result.output
    assert "FAIL policies/missing.yml: 1 problem: (top level): cannot read: No such file or directory" in result.output
    assert "1 of 2 policy files are invalid: policies/missing.yml" in result.output
    assert "d-office" not in result.output, "policy_files replaces the directory search"


def test_a_directory_without_policies_fails(tmp_path):
    empty = (tmp_path / "empty").resolve()
    empty.mkdir()
    (empty / "notes.txt").write_text("not a policy\n")
    result = run(tmp_path, str(PLAYBOOK), "-e", "policy_dir=%s" % empty)
    assert result.returncode == 2, result.output
    assert "no *.yml or *.yaml file found under %s: nothing to validate" % empty in result.output
    missing = run(tmp_path, str(PLAYBOOK), "-e", "policy_dir=%s" % (tmp_path / "nowhere"))
    assert missing.returncode == 2, missing.output
    assert "is not a directory" in missing.output
