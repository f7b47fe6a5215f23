#!/usr/bin/python
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: bpfleet_facts
short_description: Report bpfleet filter and header-log status as facts
version_added: 0.1.0
description:
  - Reads the live state of bpfleet on a host and returns it as C(ansible_facts.bpfleet).
  - Attachments come from the kernel (C(ip -d -j link), C(tc -j filter)), counters from the pinned per-CPU maps,
    log statistics from the agent's status file. Nothing is cached, so the facts show drift (a program detached or
    replaced behind bpfleet's back) as it is.
  - Needs neither BCC nor kernel headers; it talks to the kernel with plain C(bpf(2)) calls.
  - The fields are described in the collection's C(docs/facts.md).
author:
  - bpfleet contributors (@bpfleet)
extends_documentation_fragment:
  - bpfleet.core._attributes
  - bpfleet.core._attributes.facts
  - bpfleet.core._attributes.facts_module
options:
  name:
    description:
      - Report only this policy. By default every policy applied on the host is reported.
    type: str
  health_window:
    description:
      - Seconds over which the health model judges record loss and agent errors (C(docs/facts.md)).
      - By default the window the agent uses for its own metrics (its C(health_window), 300 unless configured).
        The agent keeps counter history for its own window only, so a longer one here sees no further back.
    type: float
requirements:
  - iproute2 (C(ip), C(tc)) on the host.
seealso:
  - module: bpfleet.core.policy
"""

EXAMPLES = r"""
- name: Gather bpfleet facts
  bpfleet.core.bpfleet_facts:

- name: Show dropped packets of the edge policy
  ansible.builtin.debug:
    msg: "{{ ansible_facts.bpfleet.policies['edge-web'].counters.dropped }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts added under C(bpfleet).
  returned: always
  type: dict
  contains:
    bpfleet:
      description: bpfleet status of the host.
      returned: always
      type: dict
      contains:
        kernel:
          description: Kernel release, BTF and bpffs presence, and which headers BCC uses
            (C(kind) is V(exact), V(fallback) or V(missing)).
          type: dict
          sample: {"release": "6.18.44", "btf": true, "bpffs": true,
                   "headers": {"kind": "fallback", "path": "/lib/modules/6.18.44/build",
                               "target": "/usr/src/linux-headers-6.1.0-56-amd64", "version": "6.1.0-56-amd64"}}
        agent:
          description:
            - Whether C(bpfleet-agent) runs (C(state) running, stale or stopped), its pid, mode (foreground under
              systemd, daemon under its own supervisor), version, Prometheus textfile, and the age of its status file.
          type: dict
          sample: {"state": "running", "running": true, "mode": "daemon", "pid": 1234, "version": "0.1.0",
                   "status_age_s": 0.4, "textfile": "/var/lib/prometheus/node-exporter/bpfleet.prom"}
        health:
          description:
            - The host's health from the health model (C(docs/facts.md)), C(status) V(healthy), V(degraded) or
              V(unhealthy), C(problems) (each with C(code), C(severity), C(policy), C(message), C(fails_rollout)),
              C(messages) (one line per problem), C(rollout_ok) and C(window_s). Each policy has its own
              C(health) too.
          type: dict
          sample: {"status": "unhealthy", "rollout_ok": false, "window_s": 300,
                   "messages": ["web: the agent reports: cannot write /var/log/bpfleet/web.jsonl: [Errno 28] No space"]}
        audit:
          description:
            - The host's audit trail (C(/var/lib/bpfleet/audit.jsonl), one hash-chained record per change),
              verified when the facts are gathered; C(verified) is false and C(error) and C(broken_at) say where
              when a record was edited, deleted or reordered, or records were cut from the end.
            - C(head) is the hash of the last record, C(records) the count, C(last) the latest records (seq, time,
              action, policy, actor, before and after digests).
          type: dict
          sample: {"path": "/var/lib/bpfleet/audit.jsonl", "records": 12, "head": "sha256:9f...", "verified": true,
                   "error": null, "broken_at": null, "last": []}
        policy_names:
          description: Names of the policies applied on the host.
          type: list
          elements: str
        policies:
          description:
            - Per policy name, C(policy) (name, digests, applied_at), C(attachments) (iface, hook, mode, prog_id,
              tag, expected_prog_id, ok), C(drift) (attachments missing or replaced), C(health) (the health model),
              C(healthy) (false when the health model says unhealthy),
              C(counters) (packets_seen, passed, dropped, records_emitted, records_lost, rules per rule name with
              packets and bytes), C(log) (state, path, current_file, file_bytes, records_emitted,
              records_written, bytes_written, records_lost_kernel, records_lost_user, records_lost,
              records_recovered, last_record_time, error) and C(live_edits) (per list map, how many entries
              M(bpfleet.core.blocklist) added and removed).
          type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.bpfleet.core.plugins.module_utils import _status
from ansible_collections.bpfleet.core.plugins.module_utils._runner import CommandRunner


def main():
    module = AnsibleModule(
        argument_spec=dict(name=dict(type="str"), health_window=dict(type="float")),
        supports_check_mode=True,
    )
    facts = _status.gather(CommandRunner(module), only=module.params["name"],
                           health_window=module.params["health_window"])
    module.exit_json(changed=False, ansible_facts={"bpfleet": facts})


if __name__ == "__main__":
    main()
