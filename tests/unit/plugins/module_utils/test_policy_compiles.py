# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Random valid policies compile with BCC and every program passes the kernel verifier.

A derandomized hypothesis sample of valid policies (the strategy of test_policy_properties),
plus every policy in playbooks/policies/, is validated and rendered here on the controller
side. All sources are then compiled and loaded in ONE helper process: /usr/bin/python3 (the
hosts' interpreter, the one with BCC) calls _bcc_backend.compile_and_pin for each, inside a
private mount namespace with its own bpffs, so the pins vanish with the namespace. Nothing
is attached to any interface. No mocks: real clang, real verifier.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from test_policy_properties import read_list_file, valid_policies

from ansible_collections.bpfleet.core.plugins.module_utils import _contract, _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))
import private_bpffs  # noqa: E402  (tests/fleet: the checks of a machine that compiles with BCC)

COLLECTIONS = REPO / ".tmp" / "collections"
HOST_PYTHON = "/usr/bin/python3"
EXAMPLES = int(os.environ.get("BPFLEET_COMPILE_EXAMPLES") or 12)
HELPER_TIMEOUT = 900
PIN_SUFFIX = "_test"
PROGRAM_TYPES = {"xdp": 6, "tc-ingress": 3, "tc-egress": 3}     # BPF_PROG_TYPE_XDP, BPF_PROG_TYPE_SCHED_CLS
LOG_TAIL = 4000

# Runs under /usr/bin/python3 in the private mount namespace: compile, load and pin each
# example, then read back what the kernel holds (program type and name, map shapes).
HELPER = r"""
import json, os, sys, time, traceback
config_path, results_path = sys.argv[1:3]
with open(config_path) as handle:
    config = json.load(handle)
sys.path.insert(0, config["collections"])
from ansible_collections.bpfleet.core.plugins.module_utils import _bcc_backend, _bpf_syscall as bpf

results = []
for example in config["examples"]:
    started = time.monotonic()
    result = {"name": example["name"], "programs": {}, "maps": {}, "error": None}
    pin_dir = os.path.join(config["pin_root"], example["name"])
    try:
        os.makedirs(os.path.join(pin_dir, "maps"), 0o700)
        pinned = _bcc_backend.compile_and_pin(example["source"], example["programs"], pin_dir, config["suffix"])
        for pin, path in sorted(pinned.items()):
            with bpf.open_pinned(path) as fd:
                info = bpf.prog_info(fd)
            result["programs"][pin] = {"path": path, "type": info["type"], "name": info["name"], "id": info["id"]}
        for spec in example["maps"]:
            path = os.path.join(pin_dir, "maps", spec["name"])
            if os.path.exists(path):
                with bpf.open_pinned(path) as fd:
                    info = bpf.map_info(fd)
                result["maps"][spec["name"]] = dict((key, info[key]) for key in
                                                    ("type", "key_size", "value_size", "max_entries"))
    except _bcc_backend.CompileError as error:
        result["error"] = {"stage": error.stage, "message": str(error), "log": error.log}
    except Exception as error:
        result["error"] = {"stage": "helper", "message": repr(error), "log": traceback.format_exc()}
    result["seconds"] = round(time.monotonic() - started, 2)
    results.append(result)
    with open(results_path, "w") as handle:
        json.dump(results, handle)
"""


def _skip_reason():
    return private_bpffs.skip_reason()


def shape(raw):
    """What may shape the program of a valid policy: the filter's default and, when logging is
    on, its directions, fields, whether it samples, matches and captures HTTP (list entries live
    in maps; names, paths, xdp_mode and rotation do not reach the C)."""
    model = _policy.validate(raw, "shape", read_file=read_list_file)[0]
    log = model["log"]
    logging = [log["directions"], log["fields"], log["sample"] > 1, bool(log["match"]),
               bool(log["http"])] if log["enabled"] else None
    return json.dumps([model["filter"]["default"], logging])


def sample_policies(count, candidates=16):
    """`count` valid policies of distinct shapes where there are enough, picked in order from
    count * candidates generated ones: the same on every run (derandomized hypothesis)."""
    generated = []

    @settings(max_examples=count * candidates, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(valid_policies())
    def collect(raw):
        generated.append(raw)

    collect()
    chosen, seen = [], set()
    for raw in generated:
        if shape(raw) not in seen:
            seen.add(shape(raw))
            chosen.append(raw)
    chosen.extend(raw for raw in generated if not any(raw is other for other in chosen))
    return chosen[:count]


def policy_files():
    policies = []
    for path in sorted((REPO / "playbooks" / "policies").glob("*.y*ml")):
        with open(path, "rb") as handle:
            raw = yaml.safe_load(handle)

        def read_file(name, base=path.parent):
            with open(base / name, encoding="utf-8") as handle:
                return handle.read()

        policies.append((path.relative_to(REPO).as_posix(), raw, read_file))
    return policies


def prepare(label, raw, read_file, name):
    """Validate and render on the controller side, under a name of our own (pins must not collide)."""
    raw = dict(raw, name=name)
    model, warnings = _policy.validate(raw, label, read_file=read_file)
    rendered = _render.render(model)
    return {"label": label, "raw": raw, "name": name, "source": rendered["source"],
            "programs": rendered["programs"], "maps": rendered["maps"]}


def compile_all(examples, workdir):
    """Compile and load every example in one helper process; returns (results, process, seconds)."""
    config = {"collections": str(COLLECTIONS), "pin_root": _contract.PIN_ROOT, "suffix": PIN_SUFFIX,
              "examples": [{key: example[key] for key in ("name", "source", "programs", "maps")}
                           for example in examples]}
    config_path, results_path, helper_path = workdir / "config.json", workdir / "results.json", workdir / "h.py"
    config_path.write_text(json.dumps(config))
    helper_path.write_text(HELPER)
    started = time.monotonic()
    helper = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@"', HOST_PYTHON, str(helper_path), str(config_path),
         str(results_path)],
        capture_output=True, text=True, timeout=HELPER_TIMEOUT, check=False)
    seconds = time.monotonic() - started
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    return results, helper, seconds


def describe(example, result):
    error = (result or {}).get("error") or {"stage": "helper", "message": "no result", "log": ""}
    policy = yaml.safe_dump(example["raw"], sort_keys=False, allow_unicode=True)
    return "%s (%s): %s\npolicy:\n%s\ncompiler/verifier log (last %d characters):\n%s" % (
        example["label"], example["name"], error["message"], policy, LOG_TAIL, (error["log"] or "")[-LOG_TAIL:])


def problems_of(example, result):
    """What is wrong with one example's result (empty when every program loaded and pinned)."""
    if result is None or result["error"]:
        return [describe(example, result)]
    problems = []
    wanted = {program["pin"]: program for program in example["programs"]}
    if set(result["programs"]) != set(wanted):
        problems.append("pinned %s, expected %s" % (sorted(result["programs"]), sorted(wanted)))
    for pin, loaded in result["programs"].items():
        program = wanted.get(pin)
        if program is None:
            continue
        if loaded["type"] != PROGRAM_TYPES[program["hook"]]:
            problems.append("%s: program type %d, expected %d" % (pin, loaded["type"], PROGRAM_TYPES[program["hook"]]))
        if loaded["name"] != program["function"][:15]:
            problems.append("%s: kernel name %r, expected %r" % (pin, loaded["name"], program["function"][:15]))
        if not loaded["path"].endswith("/%s/%s%s" % (example["name"], pin, PIN_SUFFIX)):
            problems.append("%s: pinned at %s" % (pin, loaded["path"]))
    for spec in example["maps"]:
        shape = dict((key, spec[key]) for key in ("type", "key_size", "value_size", "max_entries"))
        if result["maps"].get(spec["name"]) != shape:
            problems.append("map %s: pinned %r, manifest %r" % (spec["name"], result["maps"].get(spec["name"]), shape))
    if problems:
        return ["%s (%s): %s\npolicy:\n%s" % (example["label"], example["name"], "; ".join(problems),
                                              yaml.safe_dump(example["raw"], sort_keys=False))]
    return []


@pytest.mark.slow
def test_random_valid_policies_compile_and_pass_the_verifier(tmp_path, record_property):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    examples = [prepare("example %d" % index, raw, read_list_file, "prop-%02d" % index)
                for index, raw in enumerate(sample_policies(EXAMPLES))]
    examples += [prepare(label, raw, read_file, "file-%02d" % index)
                 for index, (label, raw, read_file) in enumerate(policy_files())]
    assert len(examples) >= EXAMPLES, "hypothesis gave %d examples, wanted %d" % (len(examples), EXAMPLES)

    results, helper, seconds = compile_all(examples, tmp_path)

    by_name = {result["name"]: result for result in results}
    problems = []
    for example in examples:
        problems.extend(problems_of(example, by_name.get(example["name"])))
    compiled = len(examples) - len(problems)
    programs = sum(len(result["programs"]) for result in results)
    record_property("examples_compiled", compiled)
    record_property("examples", len(examples))
    record_property("programs_loaded", programs)
    record_property("helper_seconds", round(seconds, 1))
    summary = "%d of %d examples compiled, %d programs loaded through the verifier, in %.1f s" % (
        compiled, len(examples), programs, seconds)
    if helper.returncode != 0:
        problems.append("helper exited with %d; stderr (last %d characters):\n%s" % (
            helper.returncode, LOG_TAIL, helper.stderr[-LOG_TAIL:]))
    assert not problems, summary + "\n\n" + "\n\n".join(problems)
    # The sample must exercise both kinds of program (XDP only, and with tc loggers).
    shapes = {len(example["programs"]) for example in examples}
    assert 1 in shapes and len(shapes) > 1, "the sample lacks variety (program counts %s): %s" % (shapes, summary)
