# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of bpfleet.core.policy: validate, render, then run the module on the host.

Validation and rendering happen here so a bad policy fails before any host is contacted, and
so hosts need neither Jinja2 nor the templates.
"""

from __future__ import annotations

import json
import os

import yaml
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.bpfleet.core.plugins.module_utils import _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render
from ansible_collections.bpfleet.core.plugins.plugin_utils._audit_actor import controller_actor

MODULE = "bpfleet.core.policy"


def _plain(value):
    """Strip Ansible's tagged and unsafe wrappers: the digest must see plain data."""
    return json.loads(json.dumps(value))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("src", "policy", "name", "state", "force", "allow_lockout", "live_edits",
                             "confirm_timeout", "mask_features"))

    def _load_policy(self, args):
        """Return (raw policy, source name, list-file reader), or (None, None, None)."""
        src = args.get("src")
        policy = args.get("policy")
        if src is not None and policy is not None:
            raise AnsibleActionFail("src and policy are mutually exclusive")
        if src is not None:
            path = self._find_needle("files", src)
            try:
                with open(path, "rb") as handle:
                    raw = yaml.safe_load(handle)
            except yaml.YAMLError as exc:
                raise AnsibleActionFail("%s: not valid YAML: %s" % (src, to_text(exc))) from exc
            except OSError as exc:
                raise AnsibleActionFail("%s: cannot read: %s" % (src, to_text(exc))) from exc
            base = os.path.dirname(path)
            return raw, src, lambda name: self._read_list_file(os.path.join(base, name))
        if policy is not None:
            return _plain(policy), "<inline policy>", self._read_searched_list_file
        return None, None, None

    def _read_searched_list_file(self, name):
        """List files of an inline policy are searched like a `files/` source."""
        try:
            path = self._find_needle("files", name)
        except AnsibleError as exc:
            raise OSError("not found in the files search path (%s)" % to_text(exc).splitlines()[0]) from exc
        return self._read_list_file(path)

    @staticmethod
    def _read_list_file(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def _sink_dirs(self, task_vars):
        """The host role's bpfleet_host_agent_sink_dirs for this host (default /var/log/bpfleet)."""
        value = (task_vars or {}).get("bpfleet_host_agent_sink_dirs")
        if value is None:
            return None
        value = _plain(self._templar.template(value))
        return [value] if isinstance(value, str) else value

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self._task.args
        state = args.get("state", "present")
        if state not in ("present", "absent", "rendered"):
            raise AnsibleActionFail("state must be present, absent or rendered, got %r" % (state,))

        raw, source, read_file = self._load_policy(args)
        if raw is None:
            if state != "absent" or not args.get("name"):
                raise AnsibleActionFail("give src (a policy file) or policy (a dict)%s" % (
                    ", or name with state=absent" if state == "absent" else ""))
            module_args = {"state": "absent", "name": args["name"], "audit_actor": controller_actor()}
            result.update(self._execute_module(MODULE, module_args=module_args, task_vars=task_vars))
            return result

        try:
            model, warnings = _policy.validate(raw, source, read_file=read_file,
                                               sink_dirs=self._sink_dirs(task_vars))
        except _policy.PolicyError as exc:
            result["failed"] = True
            result["msg"] = "invalid policy (%d problem%s):\n%s" % (
                len(exc.problems), "" if len(exc.problems) == 1 else "s", "\n".join(exc.problems))
            result["problems"] = exc.problems
            return result
        rendered = _render.render(model)
        if warnings:
            result.setdefault("warnings", []).extend(warnings)
            result["warnings_policy"] = warnings

        if state == "rendered":
            result.update({
                "changed": False,
                "source": rendered["source"],
                "policy": {"name": model["name"], "source_digest": rendered["source_digest"],
                           "maps_digest": rendered["maps_digest"]},
                "maps": dict((name, packed["count"]) for name, packed in rendered["lists"].items()),
                "programs": rendered["programs"],
                "model": model,
            })
            return result

        module_args = {"state": state, "force": bool(args.get("force", False)),
                       "allow_lockout": bool(args.get("allow_lockout", False)),
                       "live_edits": args.get("live_edits", "keep"), "rendered": rendered,
                       "audit_actor": controller_actor()}
        if args.get("confirm_timeout"):
            module_args["confirm_timeout"] = args["confirm_timeout"]
        if args.get("mask_features"):
            module_args["mask_features"] = list(args["mask_features"])
        module_result = self._execute_module(MODULE, module_args=module_args, task_vars=task_vars)
        warnings_from_module = module_result.pop("warnings", [])
        result.update(module_result)
        if warnings_from_module:
            result.setdefault("warnings", []).extend(warnings_from_module)
        return result
