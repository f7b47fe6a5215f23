# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of bpfleet.core.policy_rollback: adds who runs it for the audit trail."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.bpfleet.core.plugins.plugin_utils._audit_actor import controller_actor

MODULE = "bpfleet.core.policy_rollback"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        module_args = dict(self._task.args)
        module_args["audit_actor"] = controller_actor()
        result.update(self._execute_module(MODULE, module_args=module_args, task_vars=task_vars))
        return result
