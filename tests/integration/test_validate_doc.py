"""docs/validate.md's command for a clone of this repository, run exactly as the page shows it.

The block is read from the page (the `sh` block that starts with `# in a clone of this
repository`) and run by `bash` in a copy of the repository's tracked files, as a plain clone
has them: no .tmp/, no collection path, nothing on PATH but the system's. The controller venv
is the one scripts/bootstrap.sh already made here (linked in as .venv, so the bootstrap in the
block finds it up to date instead of spending minutes on pip). Controller only: no fleet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MARKER = "# in a clone of this repository"

pytestmark = pytest.mark.integration


def documented_block() -> str:
    text = (REPO / "docs" / "validate.md").read_text()
    blocks = [b for b in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S) if b.startswith(MARKER)]
    assert len(blocks) == 1, f"docs/validate.md must have exactly one sh block starting with {MARKER!r}"
    return blocks[0]


def plain_clone(dest: Path) -> Path:
    """The tracked files of the working tree (what a clone of it at this state holds)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_symlink() or src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=False)
    return dest


def test_validate_command_from_a_plain_clone(tmp_path):
    venv = REPO / ".venv"
    if not (venv / "bin" / "ansible-playbook").exists():
        pytest.skip("no .venv with ansible-playbook: run scripts/bootstrap.sh")
    clone = plain_clone(tmp_path / "bpfleet")
    assert not (clone / ".tmp").exists()
    (clone / ".venv").symlink_to(venv.resolve())
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "ANSIBLE_NOCOLOR": "1"}
    if os.geteuid() != 0:
        env["BPFLEET_SKIP_APT"] = "1"  # apt needs root; CI runs as root and bootstraps first
    block = documented_block()
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the documented command failed:\n{block}\n{output[-5000:]}"
    # Every example policy was checked and reported OK.
    policies = sorted(p.relative_to(clone / "playbooks" / "policies").as_posix()
                      for p in (clone / "playbooks" / "policies").rglob("*.yml"))
    assert policies
    for name in policies:
        assert re.search(rf'"OK   {re.escape(name)}: \S+ source_digest=sha256:[0-9a-f]{{64}} ', output), \
            f"no OK line for {name}:\n{output[-4000:]}"
    assert "failed=0" in output


def test_without_the_collection_path_the_documented_error_appears(tmp_path):
    """The page says what happens without ANSIBLE_COLLECTIONS_PATH: keep that sentence true."""
    venv = REPO / ".venv"
    if not (venv / "bin" / "ansible-playbook").exists():
        pytest.skip("no .venv with ansible-playbook: run scripts/bootstrap.sh")
    clone = plain_clone(tmp_path / "bpfleet")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "empty")}
    result = subprocess.run([str(venv / "bin" / "ansible-playbook"), "playbooks/validate.yml"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert "No filter named 'bpfleet.core.policy_validate'" in result.stdout + result.stderr
    assert "No filter named 'bpfleet.core.policy_validate'" in (REPO / "docs" / "validate.md").read_text()
    assert yaml.safe_load((clone / "playbooks" / "validate.yml").read_text())[0]["name"] == "Validate bpfleet policies"
