#!/usr/bin/python
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: policy_confirm
short_description: Confirm a commit-confirmed bpfleet policy change
version_added: 0.2.0
description:
  - M(bpfleet.core.policy) with O(bpfleet.core.policy#module:confirm_timeout) leaves a timer on the host that restores
    the last good policy when it expires. This module confirms the change, so the timer ends without doing anything.
  - That this module reaches the host at all is part of the proof, so run it over the same connection path the change
    could have cut.
  - Nothing to confirm is not an error (C(changed=false)); with O(require_pending=true) it is, for example when the
    timer already rolled the change back.
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
      - Name of the policy whose pending change is confirmed.
    type: str
    required: true
  require_pending:
    description:
      - Fail when there is no pending change to confirm (it was confirmed already, or the timer rolled it back).
    type: bool
    default: false
  audit_actor:
    description:
      - Internal. Set by the action plugin to the controller's user and host name, which the host's audit trail
        records with every change (docs/security.md); do not set it yourself.
    type: dict
seealso:
  - module: bpfleet.core.policy
  - module: bpfleet.core.policy_rollback
"""

EXAMPLES = r"""
- name: Apply with a 60 s confirm timeout
  bpfleet.core.policy:
    src: policies/edge-web.yml
    confirm_timeout: 60

- name: Still reachable, so confirm
  bpfleet.core.policy_confirm:
    name: edge-web
"""

RETURN = r"""
confirmed:
  description: The pending change that was confirmed (deadline, digest), or null.
  returned: always
  type: dict
events:
  description: The last rollback and confirm events of the policy on this host.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfleet.core.plugins.module_utils import _audit, _history


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type="str", required=True),
                                              require_pending=dict(type="bool", default=False),
                                              audit_actor=dict(type="dict")),
                           supports_check_mode=True)
    name = module.params["name"]
    pending = _history.pending(name)
    if not pending:
        if module.params["require_pending"]:
            module.fail_json(msg="policy %r has no pending change to confirm on this host (already confirmed, or the "
                                 "confirm timer rolled it back: see events)" % name, events=_history.last_events(name))
        module.exit_json(changed=False, confirmed=None, events=_history.last_events(name))
    if not module.check_mode:
        _history.clear_pending(name)
        _history.record_event(name, "confirm", source_digest=pending.get("source_digest"),
                              deadline=pending.get("deadline"))
        before = _audit.digests(name)
        problem = _audit.record_change("confirm", name, before, module.params["audit_actor"],
                                       {"source_digest": pending.get("source_digest"),
                                        "deadline": pending.get("deadline")})
        if problem:
            module.warn(problem)
    module.exit_json(changed=True, confirmed=pending, events=_history.last_events(name))


if __name__ == "__main__":
    main()
