# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of bpfleet.core.blocklist: validate and pack the entries, then run the module.

Entries are checked here, with the path of every bad one, so a typo fails before any host is
contacted; the host gets the packed form (_packing), which stays small for a 100,000-line file.
"""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.bpfleet.core.plugins.module_utils import _blocklist
from ansible_collections.bpfleet.core.plugins.plugin_utils._audit_actor import controller_actor

MODULE = "bpfleet.core.blocklist"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("policy", "list", "entries", "file", "state", "allow_lockout"))

    def _read_file(self, name):
        try:
            path = self._find_needle("files", name)
        except AnsibleError as exc:
            raise OSError("not found in the files search path (%s)" % to_text(exc).splitlines()[0]) from exc
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self._task.args
        problems = []
        policy = args.get("policy")
        if not isinstance(policy, str) or not policy:
            problems.append("policy: required, the name of a policy applied with bpfleet.core.policy")
        list_name = args.get("list", "deny")
        if list_name not in _blocklist.LISTS:
            problems.append("list: must be deny or allow, got %r" % (list_name,))
        state = args.get("state", "present")
        if state not in ("present", "absent"):
            problems.append("state: must be present or absent, got %r" % (state,))
        entries = args.get("entries")
        file_name = args.get("file")
        if entries is None and file_name is None:
            problems.append("give entries (a list of CIDRs) and/or file (a list file on the controller)")
        v4, v6, errors = _blocklist.parse_entries(entries, file_name, self._read_file)
        problems.extend(errors)
        if problems:
            result["failed"] = True
            result["msg"] = "invalid blocklist task (%d problem%s):\n%s" % (
                len(problems), "" if len(problems) == 1 else "s", "\n".join(problems))
            result["problems"] = problems
            return result
        module_args = {
            "policy": policy, "list": list_name, "state": state,
            "allow_lockout": bool(args.get("allow_lockout", False)),
            "packed": _blocklist.pack_entries(list_name, v4, v6),
            "audit_actor": controller_actor(),
        }
        result.update(self._execute_module(MODULE, module_args=module_args, task_vars=task_vars))
        return result
