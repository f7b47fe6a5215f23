#!/usr/bin/python
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: blocklist
short_description: Add or remove entries in the running deny or allow list of an applied bpfleet policy
version_added: 0.2.0
description:
  - Edits the deny or allow maps of a policy that M(bpfleet.core.policy) applied on the host, while its programs
    keep running. Nothing is compiled and no program is replaced; the packets of an added source are dropped (or
    passed) from the next packet on.
  - The entries are validated on the controller by the action plugin of the same name. Every bad entry is reported
    with its path (C(entries[3]) or the list file and line), and nothing reaches a host until all are valid.
  - Each edit is recorded on the host in C(/var/lib/bpfleet/<policy>/live_edits.json). The next
    M(bpfleet.core.policy) run with O(bpfleet.core.policy#module:live_edits=keep) (the default) keeps the edits
    and compiles nothing for them; O(bpfleet.core.policy#module:live_edits=discard) reverts them.
  - An entry already present (O(state=present)) or already absent (O(state=absent)) is left alone, so the task is
    idempotent.
  - The lockout guard of M(bpfleet.core.policy) applies. Adding a deny entry that contains the address the
    controller's SSH connection comes from, or removing the allow entry that exempts it, is refused unless
    O(allow_lockout=true).
  - See the collection's C(docs/lists.md).
author:
  - bpfleet contributors (@bpfleet)
extends_documentation_fragment:
  - bpfleet.core._attributes
attributes:
  check_mode:
    support: full
    details: Check mode reads the live maps and reports the entries that would be added or removed.
  diff_mode:
    support: full
    details: The diff lists the entries added and removed (the first few of each map, and a count of the rest).
  idempotent:
    support: full
options:
  policy:
    description:
      - Name of a policy applied on the host with M(bpfleet.core.policy).
    type: str
    required: true
  list:
    description:
      - Which list to edit. V(deny) drops the sources, V(allow) passes them even when a deny entry matches (and
        is the only way in under C(filter.default=deny)).
    type: str
    choices: [deny, allow]
    default: deny
  entries:
    description:
      - IPv4 and IPv6 networks in CIDR notation with the host bits clear (a bare address means C(/32) or C(/128)).
    type: list
    elements: str
  file:
    description:
      - A list file on the controller, one CIDR per line, C(#) starts a comment; searched like the C(src) of
        M(ansible.builtin.copy). May be combined with O(entries).
    type: path
  state:
    description:
      - V(present) adds the entries, V(absent) removes them (also entries that came from the policy itself; the
        removal is recorded, so the next policy run does not put them back unless it discards live edits).
    type: str
    choices: [present, absent]
    default: present
  allow_lockout:
    description:
      - Apply an edit that the lockout guard refuses because it would drop the controller's own SSH connection.
    type: bool
    default: false
  packed:
    description:
      - Internal. Set by the action plugin from O(entries) and O(file); do not set it yourself.
    type: dict
  audit_actor:
    description:
      - Internal. Set by the action plugin to the controller's user and host name, which the host's audit trail
        records with every change (docs/security.md); do not set it yourself.
    type: dict
requirements:
  - The policy applied on the host with M(bpfleet.core.policy) (its maps pinned in C(/sys/fs/bpf/bpfleet/<policy>/)).
seealso:
  - module: bpfleet.core.policy
  - module: bpfleet.core.bpfleet_facts
"""

EXAMPLES = r"""
- name: Block one address on every host of the fleet
  bpfleet.core.blocklist:
    policy: edge-web
    entries: [198.51.100.66]

- name: Block a list kept in a file next to the playbook
  bpfleet.core.blocklist:
    policy: edge-web
    file: lists/scanners-today.txt

- name: Unblock it again
  bpfleet.core.blocklist:
    policy: edge-web
    entries: [198.51.100.66/32]
    state: absent

- name: Exempt a monitoring network from the deny list
  bpfleet.core.blocklist:
    policy: edge-web
    list: allow
    entries: ["2001:db8:100::/64"]
"""

RETURN = r"""
changes:
  description: Per list map changed (or, in check mode, that would change), the number of entries added and
    removed, with the first few of each.
  returned: always
  type: list
  elements: dict
  sample: [{"map": "deny_v4", "added": 1, "removed": 0, "added_sample": ["198.51.100.66/32"], "removed_sample": []}]
live_edits:
  description: Per list map, how many live additions and removals the host records for the policy after this task
    (before it, in check mode).
  returned: always
  type: dict
  sample: {"deny_v4": {"added": 1, "removed": 0}, "deny_v6": {"added": 0, "removed": 0}}
lockout:
  description: What the lockout guard found for the controller's SSH address, when this edit could cut it off.
  returned: when the edit denies more or allows less
  type: dict
  sample: {"controller": "203.0.113.1", "dropped": false, "reason": "the entries added do not contain it"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfleet.core.plugins.module_utils import (
    _audit,
    _blocklist,
    _live_edits,
    _lockout,
    _maps,
    _packing,
)


def _diff(edit):
    before, after = [], []
    for map_name in sorted(set(edit.upsert) | set(edit.remove)):
        for keys, lines in ((edit.remove.get(map_name) or [], before), (edit.upsert.get(map_name) or [], after)):
            lines.extend("%s %s\n" % (map_name, text) for text in _maps.sample_texts(keys, 20))
            if len(keys) > 20:
                lines.append("%s ... and %d more\n" % (map_name, len(keys) - 20))
    return {"before_header": "live entries removed", "after_header": "live entries added",
            "before": "".join(before), "after": "".join(after)}


def _without_changed(result):
    """A failed task changed nothing: keep the findings, drop the would-be `changed`."""
    return dict((key, value) for key, value in result.items() if key != "changed")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            policy=dict(type="str", required=True),
            list=dict(type="str", default="deny", choices=["deny", "allow"]),
            entries=dict(type="list", elements="str"),
            file=dict(type="path"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            allow_lockout=dict(type="bool", default=False),
            packed=dict(type="dict"),
            audit_actor=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params["packed"]:
        module.fail_json(msg="no packed entries: call bpfleet.core.blocklist with entries or file (the action plugin "
                             "validates and packs them); the module cannot be used without its action plugin")
    try:
        edit = _blocklist.Edit(params["policy"], params["list"], params["state"], params["packed"]).plan()
    except _blocklist.BlocklistFailure as exc:
        module.fail_json(msg=str(exc), **exc.details)
    except _packing.PackingError as exc:
        module.fail_json(msg="the packed entries are damaged: %s" % exc)
    except OSError as exc:
        module.fail_json(msg="reading the maps of policy %r failed: %s" % (params["policy"], exc))
    _packing.strip_data(params["packed"])

    result = {"changed": edit.changed, "changes": edit.changes()}
    address, port = _lockout.controller_endpoint()
    guard = edit.lockout(address, port)
    if guard is not None:
        dropped, reason = guard
        result["lockout"] = {"controller": str(address), "dropped": dropped, "reason": reason}
        if dropped and not params["allow_lockout"]:
            module.fail_json(msg="lockout guard: this edit would drop the controller's SSH connection from %s (%s); "
                                 "nothing was changed. Leave that address out, or set allow_lockout: true if the "
                                 "controller will reach this host another way." % (address, reason),
                             **_without_changed(result))
    if module._diff and edit.changed:
        result["diff"] = _diff(edit)
    if edit.changed and not module.check_mode:
        before = _audit.digests(params["policy"])
        try:
            edit.apply()
        except OSError as exc:
            module.fail_json(msg="updating the maps of policy %r failed: %s" % (params["policy"], exc),
                             **_without_changed(result))
        problem = _audit.record_change("list_edit", params["policy"], before, params["audit_actor"],
                                       {"list": params["list"], "state": params["state"], "changes": result["changes"]})
        if problem:
            module.warn(problem)
    result["live_edits"] = _live_edits.counts(params["policy"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
