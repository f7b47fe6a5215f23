# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Golden files: the C rendered from every policy in playbooks/policies/, and its digests.

Each playbooks/policies/<stem>.yml is validated and rendered as the policy action plugin does
(yaml.safe_load, list files relative to the policy file) and compared byte for byte with
tests/unit/golden/<stem>.c, and its digests with tests/unit/golden/<stem>.digests.json; the
policies of the Molecule rollout scenario (extensions/molecule/rollout/policies/<stem>.yml)
likewise with tests/unit/golden/rollout-<stem>.*. The digests in these files are the
independent expectation other tests compare with (test_policy_validate.py,
test_validate_playbook.py, the rollout scenario's verify.yml). Any
change of the template, the renderer or the validator's normalization shows up here as a
diff to review. After reviewing it, regenerate:

    BPFLEET_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/plugins/plugin_utils/test_golden.py

With that variable set the tests rewrite what differs (and delete golden files whose policy
is gone), pass, and report each change as a GoldenFileUpdated warning.
"""

import difflib
import json
import os
import warnings
from pathlib import Path

import pytest
import yaml

from ansible_collections.bpfleet.core.plugins.module_utils import _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

REPO = Path(__file__).resolve().parents[4]
POLICY_DIR = REPO / "playbooks" / "policies"
GOLDEN_DIR = REPO / "tests" / "unit" / "golden"
# Policy directory -> prefix of its golden files.
POLICY_DIRS = {POLICY_DIR: "", REPO / "extensions" / "molecule" / "rollout" / "policies": "rollout-"}
POLICIES = [path for directory in POLICY_DIRS
            for path in sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))]
UPDATE = os.environ.get("BPFLEET_UPDATE_GOLDEN", "") not in ("", "0")
REGENERATE = "BPFLEET_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/plugins/plugin_utils/test_golden.py"
DIFF_LINES = 80


class GoldenFileUpdated(UserWarning):
    """A golden file was written or deleted (BPFLEET_UPDATE_GOLDEN=1)."""


def relative(path):
    return path.relative_to(REPO).as_posix()


def golden_files(policy):
    stem = POLICY_DIRS[policy.parent] + policy.stem
    return GOLDEN_DIR / (stem + ".c"), GOLDEN_DIR / (stem + ".digests.json")


def render_policy(policy):
    """Validate and render a policy file the way plugins/action/policy.py does."""
    with open(policy, "rb") as handle:
        raw = yaml.safe_load(handle)

    def read_file(name):
        with open(os.path.join(os.path.dirname(policy), name), encoding="utf-8") as handle:
            return handle.read()

    try:
        model, warnings_found = _policy.validate(raw, relative(policy), read_file=read_file)
    except _policy.PolicyError as error:
        pytest.fail("%s is not a valid policy:\n%s" % (relative(policy), "\n".join(error.problems)), pytrace=False)
    return _render.render(model)


def digests_text(rendered):
    digests = {"source_digest": rendered["source_digest"], "maps_digest": rendered["maps_digest"]}
    return json.dumps(digests, indent=2, sort_keys=True) + "\n"


def unified_diff(expected, actual, golden, policy):
    old = expected.decode("utf-8", "replace").splitlines()
    new = actual.decode("utf-8", "replace").splitlines()
    lines = list(difflib.unified_diff(old, new, "%s (golden)" % relative(golden),
                                      "rendered from %s" % relative(policy), lineterm=""))
    if not lines:
        return "(no line differs: the files differ in line endings or in the final newline)\n"
    shown = lines[:DIFF_LINES]
    if len(lines) > DIFF_LINES:
        shown.append("... %d more diff lines" % (len(lines) - DIFF_LINES))
    return "\n".join(shown) + "\n"


def compare(golden, actual, policy):
    """None when golden holds `actual`; otherwise a description of the difference (in update
    mode: of what was written)."""
    expected = golden.read_bytes() if golden.exists() else None
    if expected == actual:
        return None
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(actual)
        if expected is None:
            return "%s: created (%d lines)" % (relative(golden), actual.count(b"\n"))
        diff = unified_diff(expected, actual, golden, policy).splitlines()
        added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
        return "%s: rewritten (+%d -%d lines)" % (relative(golden), added, removed)
    if expected is None:
        return "%s is missing (the golden copy of what %s renders)" % (relative(golden), relative(policy))
    return "%s differs from what %s renders:\n%s" % (relative(golden), relative(policy),
                                                     unified_diff(expected, actual, golden, policy))


def test_there_are_policies_to_check():
    assert POLICIES, "no policy files in %s" % relative(POLICY_DIR)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda path: golden_files(path)[0].stem + path.suffix)
def test_rendered_policy_matches_golden_files(policy, record_property):
    rendered = render_policy(policy)
    c_file, digests_file = golden_files(policy)
    changes = [change for change in (compare(c_file, rendered["source"].encode("utf-8"), policy),
                                     compare(digests_file, digests_text(rendered).encode("utf-8"), policy))
               if change]
    record_property("golden_changes", len(changes))
    if not changes:
        return
    if UPDATE:
        for change in changes:
            warnings.warn(GoldenFileUpdated(change), stacklevel=1)
        return
    pytest.fail("\n".join(changes) + "\nIf the change is intended, review it, then regenerate the golden files:\n"
                "    %s\nand commit them with the change." % REGENERATE, pytrace=False)


def test_no_golden_file_without_its_policy():
    wanted = {path for policy in POLICIES for path in golden_files(policy)}
    present = GOLDEN_DIR.iterdir() if GOLDEN_DIR.is_dir() else []
    orphans = sorted(path for path in present if path.is_file() and path not in wanted)
    if not orphans:
        return
    if UPDATE:
        for path in orphans:
            path.unlink()
            warnings.warn(GoldenFileUpdated("%s: deleted (no policy renders it)" % relative(path)), stacklevel=1)
        return
    pytest.fail("golden files without a policy in %s: %s\nRemove them, or run:\n    %s" % (
        " or ".join(relative(directory) for directory in POLICY_DIRS),
        ", ".join(relative(path) for path in orphans), REGENERATE), pytrace=False)
