"""The published JSON Schema and the reference page are generated from the code's schema,
and the JSON Schema agrees with the validator on example policies."""

import copy
import importlib.util
from pathlib import Path

import jsonschema
import pytest
import yaml

from ansible_collections.bpfleet.core.plugins.module_utils import _policy

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "playbooks" / "policies"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_policy_reference", REPO / "scripts" / "gen_policy_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current():
    generator = load_generator()
    assert generator.SCHEMA_FILE.read_text() == generator.schema_json(), \
        "docs/policy.schema.json is stale: run .venv/bin/python scripts/gen_policy_reference.py"
    assert generator.REFERENCE_FILE.read_text() == generator.reference_markdown(), \
        "docs/policy-reference.md is stale: run .venv/bin/python scripts/gen_policy_reference.py"


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(_policy.POLICY_SCHEMA)


@pytest.mark.parametrize("policy_file", sorted(POLICIES.glob("*.yml")), ids=lambda p: p.name)
def test_example_policies_pass_the_schema_and_the_validator(policy_file):
    raw = yaml.safe_load(policy_file.read_text())
    jsonschema.validate(raw, _policy.POLICY_SCHEMA)

    def read_file(name):
        return (policy_file.parent / name).read_text()

    model, warnings = _policy.validate(raw, policy_file.name, read_file=read_file)
    assert model["name"] == raw["name"]
    assert warnings == []


FULL = yaml.safe_load((POLICIES / "full-example.yml").read_text())


@pytest.mark.parametrize("mutate", [
    lambda p: p.update(colour="blue"),
    lambda p: p["filter"].update(deny_list=[]),
    lambda p: p["log"]["sink"].update(rotate=True),
    lambda p: p.update(xdp_mode="fast"),
    lambda p: p["log"].update(fields=["src_ipp"]),
    lambda p: p["log"].update(directions=[]),
    lambda p: p.update(interfaces=[]),
    lambda p: p.update(interfaces=["lo"]),
    lambda p: p.update(name="Edge Web"),
    lambda p: p.pop("name"),
    lambda p: p["log"]["sink"].update(keep=0),
    lambda p: p["filter"]["deny"].append({"comment": "no cidr"}),
])
def test_schema_and_validator_reject_the_same_mistakes(mutate):
    raw = copy.deepcopy(FULL)
    raw["filter"]["deny"] = [e for e in raw["filter"]["deny"] if not (isinstance(e, dict) and "file" in e)]
    mutate(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, _policy.POLICY_SCHEMA)
    with pytest.raises(_policy.PolicyError):
        _policy.validate(raw, "full-example.yml")
