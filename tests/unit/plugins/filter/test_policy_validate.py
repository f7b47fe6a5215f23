"""Filters policy_validate and policy_render: lint results as data, never a traceback for a bad policy."""

import copy
import datetime
import json
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.bpfleet.core.plugins.filter import policy_validate as plugin
from ansible_collections.bpfleet.core.plugins.module_utils import _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

GOOD = {
    "name": "edge-web",
    "interfaces": ["eth0"],
    "filter": {"deny": ["203.0.113.0/24", "2001:db8:bad::/48"], "allow": ["198.51.100.7/32"]},
    "log": {"directions": ["ingress"]},
}

GOOD_YAML = """\
name: edge-web
interfaces: [eth0]
filter:
  deny:
    - 203.0.113.0/24
    - "2001:db8:bad::/48"
  allow: [198.51.100.7/32]
log:
  directions: [ingress]
"""

# Three independent problems: all of them must be reported at once.
BAD = {
    "name": "edge-web",
    "interfaces": ["eth0"],
    "filter": {"deny": ["203.0.113.0/24", "10.0.0.300/24"], "deny_list": []},
    "xdp_mode": "fast",
}


def expected_render(raw, source):
    model, warnings = _policy.validate(copy.deepcopy(raw), source)
    return _render.render(model), warnings


def validator_problems(raw, source):
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(copy.deepcopy(raw), source)
    return caught.value.problems


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_filters_are_registered():
    filters = plugin.FilterModule().filters()
    assert filters["policy_validate"] is plugin.policy_validate
    assert filters["policy_render"] is plugin.policy_render


def test_valid_policy_returns_name_digests_and_map_sizes():
    result = plugin.policy_validate(copy.deepcopy(GOOD))
    rendered, warnings = expected_render(GOOD, "<inline policy>")
    assert result == {
        "valid": True,
        "source": "<inline policy>",
        "problems": [],
        "warnings": warnings,
        "name": "edge-web",
        "source_digest": rendered["source_digest"],
        "maps_digest": rendered["maps_digest"],
        "maps": {"deny_v4": 1, "deny_v6": 1, "allow_v4": 1, "allow_v6": 0},
    }
    assert result["source_digest"].startswith("sha256:")


REPO = Path(__file__).resolve().parents[4]
GOLDEN_DIR = REPO / "tests" / "unit" / "golden"
REPO_POLICIES = sorted((REPO / "playbooks" / "policies").glob("*.yml"))


@pytest.mark.parametrize("path", REPO_POLICIES, ids=lambda path: path.name)
def test_digests_of_the_repository_policies_are_the_golden_ones(path):
    """The expected digests come from tests/unit/golden (reviewed, committed), not from
    rendering again in this process: a change of the digest computation shows up here."""
    golden = json.loads((GOLDEN_DIR / (path.stem + ".digests.json")).read_text())
    result = plugin.policy_validate(str(path))
    assert result["valid"] is True, result["problems"]
    assert result["name"] == yaml.safe_load(path.read_text())["name"]
    assert {"source_digest": result["source_digest"], "maps_digest": result["maps_digest"]} == golden
    assert plugin.policy_render(str(path)) == (GOLDEN_DIR / (path.stem + ".c")).read_text()


def test_input_is_not_modified():
    policy = copy.deepcopy(GOOD)
    plugin.policy_validate(policy)
    assert policy == GOOD


def test_invalid_policy_is_a_result_with_every_problem():
    result = plugin.policy_validate(copy.deepcopy(BAD), source="edge.yml")
    assert result["valid"] is False
    assert result["problems"] == validator_problems(BAD, "edge.yml")
    assert len(result["problems"]) == 3
    joined = "\n".join(result["problems"])
    assert "edge.yml: filter.deny[1]: not an IP network: 10.0.0.300/24" in joined
    assert "edge.yml: filter.deny_list: unknown field (did you mean 'deny'?)" in joined
    assert "edge.yml: xdp_mode: " in joined
    assert result["name"] == "edge-web"
    assert result["source_digest"] is None and result["maps_digest"] is None
    assert result["maps"] == {}


def test_warnings_do_not_invalidate():
    policy = dict(GOOD, filter={"deny": ["203.0.113.0/24", "203.0.113.0/24"]})
    result = plugin.policy_validate(policy, source="dup.yml")
    assert result["valid"] is True
    assert len(result["warnings"]) == 1
    assert result["warnings"][0].startswith("dup.yml: filter.deny[1]: duplicate of filter.deny[0]")


def test_file_input_uses_the_path_as_source_and_matches_the_dict_form(tmp_path):
    path = write(tmp_path, "edge.yml", GOOD_YAML)
    from_file = plugin.policy_validate(path)
    from_dict = plugin.policy_validate(copy.deepcopy(GOOD))
    assert from_file["valid"] is True, from_file["problems"]
    assert from_file["source"] == path
    assert from_file["source_digest"] == from_dict["source_digest"]
    assert from_file["maps_digest"] == from_dict["maps_digest"]
    assert plugin.policy_validate(path, source="policies/edge.yml")["source"] == "policies/edge.yml"


def test_invalid_file_names_the_file_in_every_problem(tmp_path):
    path = write(tmp_path, "bad.yml", "name: Bad Name\ninterfaces: []\nfilter:\n  deny: [10.0.0.300/24]\n")
    result = plugin.policy_validate(path)
    assert result["valid"] is False
    assert [p.split(": ", 2)[:2] for p in result["problems"]] == [
        [path, "name"], [path, "interfaces"], [path, "filter.deny[0]"]]
    assert result["name"] == "Bad Name", "the name as written, to tell which policy is bad"
    assert plugin.policy_validate({"name": 42})["name"] is None


def test_list_files_are_read_relative_to_the_policy_file(tmp_path):
    (tmp_path / "lists").mkdir()
    write(tmp_path, "lists/scanners.txt", "# scanners\n192.0.2.0/24\n10.0.0.300/24  # typo\n")
    path = write(tmp_path, "edge.yml",
                 "name: edge\ninterfaces: [eth0]\nfilter:\n  deny:\n    - file: lists/scanners.txt\n")
    result = plugin.policy_validate(path, source="edge.yml")
    assert result["problems"] == ["edge.yml: filter.deny[0] (lists/scanners.txt line 3): not an IP network: "
                                  "10.0.0.300/24"]


def test_relative_list_file_of_a_dict_needs_basedir(tmp_path):
    write(tmp_path, "scanners.txt", "192.0.2.0/24\n")
    policy = {"name": "edge", "interfaces": ["eth0"], "filter": {"deny": [{"file": "scanners.txt"}]}}
    without = plugin.policy_validate(copy.deepcopy(policy))
    assert without["valid"] is False
    assert without["problems"][0].startswith("<inline policy>: filter.deny[0].file: cannot read list file scanners.txt")
    assert "basedir" in without["problems"][0]
    with_basedir = plugin.policy_validate(copy.deepcopy(policy), basedir=str(tmp_path))
    assert with_basedir["valid"] is True, with_basedir["problems"]
    assert with_basedir["maps"]["deny_v4"] == 1


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_is_a_problem(tmp_path, kind):
    path = str(tmp_path / "missing.yml") if kind == "missing" else str(tmp_path)
    result = plugin.policy_validate(path)
    assert result["valid"] is False
    assert len(result["problems"]) == 1
    assert result["problems"][0].startswith("%s: (top level): cannot read: " % path)
    assert ("No such file" if kind == "missing" else "Is a directory") in result["problems"][0]


def test_yaml_syntax_error_is_a_problem_naming_file_and_line(tmp_path):
    path = write(tmp_path, "broken.yml", "name: edge\ninterfaces: [eth0\nfilter: {}\n")
    result = plugin.policy_validate(path, source="broken.yml")
    assert result["valid"] is False
    assert len(result["problems"]) == 1
    problem = result["problems"][0]
    assert problem.startswith("broken.yml: line 3, column "), problem
    assert "not valid YAML" in problem
    assert "\n" not in problem


def test_yaml_that_is_not_a_policy_mapping(tmp_path):
    empty = plugin.policy_validate(write(tmp_path, "empty.yml", "# nothing yet\n"), source="empty.yml")
    assert empty["problems"] == ["empty.yml: (top level): the file is empty (a policy is a mapping with at least "
                                 "name and interfaces)"]
    listed = plugin.policy_validate(write(tmp_path, "list.yml", "- name: edge\n"), source="list.yml")
    assert listed["problems"] == ["list.yml: (top level): a policy must be a mapping, got list"]
    several = plugin.policy_validate(write(tmp_path, "two.yml", "name: a\n---\nname: b\n"), source="two.yml")
    assert several["valid"] is False and "not valid YAML" in several["problems"][0]


def test_duplicate_yaml_key_is_a_warning(tmp_path):
    path = write(tmp_path, "dup.yml", "name: edge\ninterfaces: [eth0]\nfilter:\n  deny: [192.0.2.0/24]\n"
                                      "  deny: [198.51.100.0/24]\n")
    result = plugin.policy_validate(path, source="dup.yml")
    assert result["valid"] is True
    assert result["maps"]["deny_v4"] == 1, "the last value wins, as in the policy module"
    assert result["warnings"] == ["dup.yml: filter.deny: duplicate key on line 5 (first on line 4): only the last "
                                  "value is used"]


def test_value_that_is_not_plain_data_is_a_problem():
    policy = dict(GOOD, filter={"deny": ["203.0.113.0/24", datetime.date(2026, 11, 1)]})
    result = plugin.policy_validate(policy)
    assert result["problems"] == ["<inline policy>: filter.deny[1]: not plain data (a string, number, boolean, list "
                                  "or mapping is expected)"]


@pytest.mark.parametrize("value, message", [
    (["edge.yml"], "got list"),
    (42, "got int"),
    (None, "got NoneType"),
    ("", "got an empty string"),
    ("name: edge\ninterfaces: [eth0]\n", "with a newline"),
])
def test_wrong_input_raises(value, message):
    for name, function in (("policy_validate", plugin.policy_validate), ("policy_render", plugin.policy_render)):
        with pytest.raises(AnsibleFilterError, match=message) as caught:
            function(value)
        assert str(caught.value).startswith(name + ": ")


@pytest.mark.parametrize("option", ["source", "basedir"])
def test_non_string_option_raises(option):
    with pytest.raises(AnsibleFilterError, match="%s must be a string, got int" % option):
        plugin.policy_validate(copy.deepcopy(GOOD), **{option: 3})


def test_render_returns_the_c_source(tmp_path):
    rendered, warnings = expected_render(GOOD, "x")
    del warnings
    assert plugin.policy_render(copy.deepcopy(GOOD)) == rendered["source"]
    assert plugin.policy_render(write(tmp_path, "edge.yml", GOOD_YAML)) == rendered["source"]
    assert '"edge-web"' in rendered["source"]


def test_render_of_an_invalid_policy_raises_with_every_problem(tmp_path):
    with pytest.raises(AnsibleFilterError) as caught:
        plugin.policy_render(copy.deepcopy(BAD), source="edge.yml")
    message = str(caught.value)
    assert message.startswith("policy_render: edge.yml: invalid policy (3 problems):\n")
    for problem in validator_problems(BAD, "edge.yml"):
        assert problem in message
    with pytest.raises(AnsibleFilterError, match=r"broken\.yml: line 2, column \d+: not valid YAML"):
        plugin.policy_render(write(tmp_path, "broken.yml", "name: a\n b: [\n"), source="broken.yml")
