#!/usr/bin/python
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: policy_rollback
short_description: Roll a bpfleet policy back to its last good version on a host
version_added: 0.2.0
description:
  - Every change applied by M(bpfleet.core.policy) keeps the version it replaced as the host's last good policy
    (rendered source, map contents, digests) and keeps its programs pinned as C(<pin>_good) under
    C(/sys/fs/bpf/bpfleet/<name>/).
  - This module restores that version. When the pinned good programs still use the pinned maps, it re-attaches them
    (atomic XDP and tc replace) and restores the list maps by delta, without compiling (RV(compiled=false), the
    program ids are those of the old programs). When a map was recreated since, it compiles the recorded good
    source again with BCC.
  - A pending commit-confirmed change (see O(bpfleet.core.policy#module:confirm_timeout)) is cancelled.
  - Running it again when the host already runs the last good version changes nothing.
author:
  - bpfleet contributors (@bpfleet)
extends_documentation_fragment:
  - bpfleet.core._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  name:
    description:
      - Name of the policy to roll back.
    type: str
    required: true
  audit_actor:
    description:
      - Internal. Set by the action plugin to the controller's user and host name, which the host's audit trail
        records with every change (docs/security.md); do not set it yourself.
    type: dict
requirements:
  - On the host, BCC's Python bindings only when the good programs are no longer pinned or a map was recreated.
  - iproute2 (C(ip), C(tc)) on the host.
seealso:
  - module: bpfleet.core.policy
  - module: bpfleet.core.policy_confirm
"""

EXAMPLES = r"""
- name: Roll the edge policy back to its last good version
  bpfleet.core.policy_rollback:
    name: edge-web
"""

RETURN = r"""
policy:
  description: Name and digests of the version the host runs after the rollback.
  returned: success
  type: dict
rolled_back_from:
  description: Digests of the version that was replaced.
  returned: success
  type: dict
compiled:
  description: Whether the rollback compiled (false when the pinned good programs were re-attached).
  returned: success
  type: bool
reused_pins:
  description: Whether the pinned good programs could be reused.
  returned: success
  type: bool
recompile_reason:
  description: Why the pinned good programs could not be reused.
  returned: when RV(reused_pins=false)
  type: str
prog_ids:
  description: Program id per hook after the rollback.
  returned: when changed and not in check mode
  type: dict
  sample: {"xdp": 1234, "tc-ingress": 1235, "tc-egress": 1236}
plan:
  description: What was (or, in check mode, would be) done.
  returned: success
  type: list
  elements: str
commands:
  description: The state-changing C(ip) and C(tc) commands run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfleet.core.plugins.module_utils import _apply, _audit, _bcc_backend, _history
from ansible_collections.bpfleet.core.plugins.module_utils._runner import CommandError, CommandRunner


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type="str", required=True), audit_actor=dict(type="dict")),
                           supports_check_mode=True)
    before = _audit.digests(module.params["name"])
    runner = CommandRunner(module)
    compile_fn = _bcc_backend.compile_and_pin if _bcc_backend.HAS_BCC else None
    try:
        result = _history.rollback(runner, module.params["name"], compile_fn, check_mode=module.check_mode)
    except _history.NoGoodPolicy as exc:
        module.fail_json(msg=str(exc), commands=runner.commands)
    except _bcc_backend.CompileError as exc:
        module.fail_json(msg="rollback %s" % exc, stage=exc.stage, log=exc.log, commands=runner.commands)
    except _apply.PolicyFailure as exc:
        module.fail_json(msg=str(exc), commands=runner.commands, **exc.details)
    except CommandError as exc:
        module.fail_json(msg=str(exc), rc=exc.rc, stdout=exc.out, stderr=exc.err, commands=runner.commands)
    except OSError as exc:
        module.fail_json(msg="rollback failed: %s" % exc, commands=runner.commands)
    result["commands"] = runner.commands
    if result.get("changed") and not module.check_mode:
        problem = _audit.record_change("rollback", module.params["name"], before, module.params["audit_actor"],
                                       {"reason": "on demand", "to": result.get("to"),
                                        "rolled_back_from": result.get("rolled_back_from")})
        if problem:
            module.warn(problem)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
