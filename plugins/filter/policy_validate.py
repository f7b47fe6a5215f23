# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters bpfleet.core.policy_validate and bpfleet.core.policy_render (docs in the .yml files).

They lint a policy on the controller with the same code the policy action plugin uses, so a
policy repository can check its policies in CI with nothing but ansible-core and this
collection: no fleet, no BCC, no root.

An invalid policy is a result of policy_validate, never an exception: a lint run must report
every bad file, not stop at the first. Only wrong use of the filter raises.
"""

from __future__ import annotations

import json
import os

import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.bpfleet.core.plugins.module_utils import _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

INLINE_SOURCE = "<inline policy>"
TOP = "(top level)"


def _problem(source, where, message):
    return "%s: %s: %s" % (source, where, message)


def _one_line(text):
    return " ".join(str(text).split())


def _yaml_problem(source, exc):
    """A YAML error as one 'file: line L, column C: message' problem (PyYAML marks count from 0)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return _problem(source, TOP, "not valid YAML: %s" % _one_line(exc))
    message = "not valid YAML: %s" % _one_line(problem)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        message += " (%s%s)" % (_one_line(context), "" if context_mark is None else " at line %d, column %d" % (
            context_mark.line + 1, context_mark.column + 1))
    return _problem(source, "line %d, column %d" % (mark.line + 1, mark.column + 1), message)


def _join(path, key):
    if isinstance(key, int):
        return "%s[%d]" % (path, key)
    return "%s.%s" % (path, key) if path else str(key)


def _duplicate_keys(node, path, source, found):
    """Warn about a key given twice in one mapping: YAML loaders keep the last value silently,
    so a second `deny:` would quietly drop the first list (the policy module loads the same way)."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = key_node.value
                if key in seen:
                    found.append(_problem(source, _join(path, key), "duplicate key on line %d (first on line %d): "
                                          "only the last value is used" % (key_node.start_mark.line + 1, seen[key])))
                else:
                    seen[key] = key_node.start_mark.line + 1
                child = _join(path, key)
            else:
                child = path
            _duplicate_keys(value_node, child, source, found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, _join(path, index), source, found)


def _load_file(path, source):
    """Return (raw policy or None, problems, warnings) for a policy file; never raises."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return None, [_problem(source, TOP, "cannot read: %s" % (exc.strerror or exc))], []
    loader = yaml.SafeLoader(data)
    try:
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(source, exc)], []
    finally:
        loader.dispose()
    if node is None:
        return None, [_problem(source, TOP, "the file is empty (a policy is a mapping with at least name and "
                                            "interfaces)")], []
    warnings = []
    _duplicate_keys(node, "", source, warnings)
    return raw, [], warnings


def _not_plain(value, path):
    """Path of the first value JSON cannot carry (the policy action plugin would fail on it), else None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                return _join(path, repr(key))
            found = _not_plain(item, _join(path, key))
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _not_plain(item, _join(path, index))
            if found is not None:
                return found
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    return path or TOP


def _list_file_reader(basedir):
    """read_file for the validator: list files ({file: ...} entries) relative to basedir, as the action plugin does."""
    def read_file(name):
        if not os.path.isabs(name) and basedir is None:
            raise OSError("a relative list file of an inline policy needs the filter's basedir option (the policy "
                          "module searches the files/ directories, which a filter cannot see)")
        with open(os.path.join(basedir or "", name), encoding="utf-8") as handle:
            return handle.read()
    return read_file


def _load(value, source, basedir, filter_name):
    """Return (raw policy or None, source name, list-file reader, problems, warnings) from the filter's input."""
    for option, given in (("source", source), ("basedir", basedir)):
        if given is not None and not isinstance(given, str):
            raise AnsibleFilterError("%s: %s must be a string, got %s" % (filter_name, option, type(given).__name__))
    if isinstance(value, str):
        path = str(value)
        if not path.strip():
            raise AnsibleFilterError("%s: expects a policy (a dict) or the path of a policy file, got an empty "
                                     "string" % filter_name)
        if "\n" in path:
            raise AnsibleFilterError("%s: expects a policy (a dict) or the path of a policy file, got a string "
                                     "with a newline (YAML text? use from_yaml first)" % filter_name)
        name = str(source) if source else path
        read_file = _list_file_reader(str(basedir) if basedir else os.path.dirname(path))
        raw, problems, warnings = _load_file(path, name)
        return raw, name, read_file, problems, warnings
    if isinstance(value, dict):
        name = str(source) if source else INLINE_SOURCE
        read_file = _list_file_reader(str(basedir) if basedir else None)
        try:
            # Strip Ansible's tagged and unsafe wrappers, as the policy action plugin does.
            return json.loads(json.dumps(value)), name, read_file, [], []
        except (TypeError, ValueError):
            where = _not_plain(value, "") or TOP
            return None, name, read_file, [_problem(name, where, "not plain data (a string, number, boolean, list "
                                                                 "or mapping is expected)")], []
    raise AnsibleFilterError("%s: expects a policy (a dict) or the path of a policy file (a string), got %s" % (
        filter_name, type(value).__name__))


def _check(value, source, basedir, filter_name, sink_dirs=None):
    """Return (raw policy, model or None, rendered or None, source name, problems, warnings)."""
    raw, name, read_file, problems, warnings = _load(value, source, basedir, filter_name)
    if problems:
        return raw, None, None, name, problems, warnings
    try:
        model, policy_warnings = _policy.validate(raw, name, read_file=read_file, sink_dirs=sink_dirs)
    except _policy.PolicyError as exc:
        return raw, None, None, name, list(exc.problems), warnings
    try:
        rendered = _render.render(model)
    except Exception as exc:
        # A valid policy that does not render is a bug of the collection, not of the policy.
        raise AnsibleFilterError("%s: %s: rendering the valid policy failed (a bpfleet.core bug): %s: %s" % (
            filter_name, name, type(exc).__name__, exc)) from exc
    return raw, model, rendered, name, [], warnings + list(policy_warnings)


def policy_validate(value, source=None, basedir=None, sink_dirs=None):
    """Validate a policy (a dict, or the path of a YAML file); an invalid policy is a result."""
    raw, model, rendered, name, problems, warnings = _check(value, source, basedir, "policy_validate", sink_dirs)
    if model is None:
        raw_name = raw.get("name") if isinstance(raw, dict) else None
        return {
            "valid": False,
            "source": name,
            "problems": problems,
            "warnings": warnings,
            "name": raw_name if isinstance(raw_name, str) else None,
            "source_digest": None,
            "maps_digest": None,
            "maps": {},
        }
    return {
        "valid": True,
        "source": name,
        "problems": [],
        "warnings": warnings,
        "name": model["name"],
        "source_digest": rendered["source_digest"],
        "maps_digest": rendered["maps_digest"],
        "maps": dict((map_name, packed["count"]) for map_name, packed in rendered["lists"].items()),
    }


def policy_render(value, source=None, basedir=None, sink_dirs=None):
    """Return the C source rendered from a policy; raise AnsibleFilterError with every problem when invalid."""
    checked = _check(value, source, basedir, "policy_render", sink_dirs)
    rendered, name, problems = checked[2], checked[3], checked[4]
    if rendered is None:
        raise AnsibleFilterError("policy_render: %s: invalid policy (%d problem%s):\n%s" % (
            name, len(problems), "" if len(problems) == 1 else "s", "\n".join(problems)))
    return rendered["source"]


class FilterModule:
    """bpfleet policy filters."""

    def filters(self):
        return {
            "policy_validate": policy_validate,
            "policy_render": policy_render,
        }
