#!/usr/bin/python
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: policy
short_description: Compile, attach and fill an eBPF packet policy on a host
version_added: 0.1.0
description:
  - Applies a bpfleet policy to a Linux host. The action plugin of the same name validates the policy on the
    controller and renders the eBPF C program from the templates in the collection's C(bpf/) directory; this
    module then compiles and verifies it with BCC on the host, pins programs and maps under
    C(/sys/fs/bpf/bpfleet/<name>/), attaches the XDP filter and the tc clsact loggers, and updates the list maps
    by delta.
  - Idempotent by digest and by live state. When the rendered source digest matches the recorded one, the pinned
    programs are the attached ones and the list maps hold exactly the desired entries, nothing compiles and the
    task reports C(changed=false).
  - A list-only change (for example one more prefix in C(filter.deny)) updates the maps without compiling.
  - A new program version is compiled and verified while the old one keeps running, then replaces it atomically.
    A compile or verifier error fails the task with the compiler or verifier output and leaves the previous
    program attached.
  - An XDP program that bpfleet did not attach is never replaced unless O(force=true).
  - The policy format is described in the collection's C(docs/policy.md).
author:
  - bpfleet contributors (@bpfleet)
extends_documentation_fragment:
  - bpfleet.core._attributes
attributes:
  check_mode:
    support: full
    details: Check mode compares the rendered policy with the live kernel state and reports what would change,
      without compiling or touching the host.
  diff_mode:
    support: full
    details: The diff shows the change of the rendered C program and a summary of the map entries added and removed.
  idempotent:
    support: full
options:
  src:
    description:
      - Path to a policy YAML file on the controller. Relative paths are searched like the C(src) of
        M(ansible.builtin.copy) (role C(files/), playbook directory).
      - Mutually exclusive with O(policy).
    type: path
  policy:
    description:
      - The policy as a dictionary. Mutually exclusive with O(src).
    type: dict
  name:
    description:
      - Name of the policy to remove. Only used with O(state=absent) when neither O(src) nor O(policy) is given.
    type: str
  state:
    description:
      - V(present) applies the policy, V(absent) detaches it and removes its pins and records.
      - V(rendered) validates and renders the policy on the controller and returns the C source, the map contents
        summary and both digests without contacting the host (for the CI of a policy repository).
    type: str
    choices: [present, absent, rendered]
    default: present
  force:
    description:
      - Replace an XDP program that bpfleet did not attach.
    type: bool
    default: false
  allow_lockout:
    description:
      - The lockout guard refuses a policy whose filter would drop the address the controller's SSH connection
        comes from (taken from C(SSH_CONNECTION) on the host), in check mode too. Set V(true) to apply such a
        policy anyway, for example when the controller will reach the host another way.
      - Without an SSH connection (C(connection=local)) there is nothing to guard.
    type: bool
    default: false
  live_edits:
    description:
      - What to do with the live list edits that M(bpfleet.core.blocklist) made in this policy's running maps
        (recorded on the host in C(/var/lib/bpfleet/<name>/live_edits.json)).
      - V(keep) lays them over the policy's lists, so this run neither reverts nor recompiles them. An added entry
        that the policy now lists itself, and a removed entry that the policy no longer lists, are dropped from
        the record (the policy took them over).
      - V(discard) brings the maps back to exactly the policy's lists and deletes the record.
    type: str
    choices: [keep, discard]
    default: keep
  confirm_timeout:
    description:
      - Commit-confirmed. When the run changes the host, the host starts a timer of this many seconds and restores
        the last good policy by itself unless M(bpfleet.core.policy_confirm) runs before it expires. The timer runs on
        the host (a detached process, no systemd needed), so it works when this change cut the controller off.
      - V(0) (the default) applies without a timer. A run that changes nothing starts no timer.
      - A later change of the same policy without O(confirm_timeout) confirms a pending one.
    type: int
    default: 0
  mask_features:
    description:
      - Kernel features to treat as missing although the host's kernel has them, so that the host compiles and runs
        the fallback path, as a kernel without them would (a test switch; see the collection's
        C(docs/compatibility.md) for the features and their fallbacks).
      - Only optional features can be masked; naming a required or unknown one fails the task before anything changes.
    type: list
    elements: str
    default: []
  rendered:
    description:
      - Internal. Set by the action plugin from O(src) or O(policy); do not set it yourself.
    type: dict
  audit_actor:
    description:
      - Internal. Set by the action plugin to the controller's user and host name, which the host's audit trail
        records with every change (docs/security.md); do not set it yourself.
    type: dict
requirements:
  - On the host, BCC's Python bindings for the system Python (Debian/Ubuntu package C(python3-bpfcc)) and kernel
    headers (the P(bpfleet.core.host#role) role installs both).
  - iproute2 (C(ip), C(tc)) on the host.
seealso:
  - module: bpfleet.core.bpfleet_facts
  - module: bpfleet.core.blocklist
  - module: bpfleet.core.policy_rollback
  - module: bpfleet.core.policy_confirm
"""

EXAMPLES = r"""
- name: Apply the edge policy from a file
  bpfleet.core.policy:
    src: policies/edge-web.yml

- name: Apply an inline policy
  bpfleet.core.policy:
    policy:
      name: edge-web
      interfaces: [eth0]
      filter:
        deny: [203.0.113.0/24]
      log:
        fields: [src_ip, dst_ip, proto, src_port, dst_port, action]

- name: Render only, for review in a pull request
  bpfleet.core.policy:
    src: policies/edge-web.yml
    state: rendered
  delegate_to: localhost
  register: rendered

- name: Apply the policy and drop the entries blocklist added or removed since
  bpfleet.core.policy:
    src: policies/edge-web.yml
    live_edits: discard

- name: Apply with commit-confirmed; the host rolls back by itself unless confirmed within 120 s
  bpfleet.core.policy:
    src: policies/edge-web.yml
    confirm_timeout: 120

- name: Remove the policy
  bpfleet.core.policy:
    name: edge-web
    state: absent
"""

RETURN = r"""
policy:
  description: Name and digests of the policy.
  returned: always
  type: dict
  contains:
    name:
      description: Policy name.
      type: str
      sample: edge-web
    source_digest:
      description: sha256 of the rendered C source.
      type: str
      sample: sha256:2ae01b08...
    maps_digest:
      description: sha256 of the canonical list map contents.
      type: str
      sample: sha256:14ddfa6e...
kernel:
  description:
    - The host's kernel as the program was compiled for it. C(features_digest) is the sha256 of the generated
      C(bpfleet_features.h); C(fallbacks) maps each optional feature the kernel lacks (or that O(mask_features)
      masked) to what the program does instead; C(masked) lists the masked ones.
  returned: when O(state=present)
  type: dict
  sample: {"release": "6.18.44-fc-v1300", "features_digest": "sha256:6c1d...",
           "fallbacks": {"xdp_adjust_meta_in_xdp": "the tc ingress logger classifies each logged packet again"},
           "masked": [], "probe_cached": true}
compiled:
  description: Whether a compile happened (or, in check mode, would happen).
  returned: when O(state=present)
  type: bool
plan:
  description: Human-readable steps that were taken (or, in check mode, would be taken).
  returned: when O(state=present)
  type: list
  elements: str
  sample: ["compile and load: policy not applied on this host yet", "attach XDP on eth0: new program version"]
commands:
  description: The state-changing C(ip) and C(tc) commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
map_changes:
  description: Per list map, the number of entries added and removed, with the first few of each.
  returned: when O(state=present)
  type: list
  elements: dict
lockout:
  description: What the lockout guard found for the controller's SSH address.
  returned: when O(state=present)
  type: dict
  sample: {"controller": "203.0.113.1", "dropped": false, "reason": "no list matches it and filter.default is allow"}
attachments:
  description: XDP attach mode per interface after the run.
  returned: when O(state=present) and not in check mode
  type: dict
  sample: {"eth0": "native"}
history:
  description:
    - The last good version kept for rollback (C(good), digests or null), the pending confirmation
      (C(pending), with its deadline, or null) and the last few rollback and confirm events.
  returned: when O(state=present) and not in check mode
  type: dict
  sample: {"good": {"source_digest": "sha256:2ae0...", "maps_digest": "sha256:14dd..."},
           "pending": {"deadline": "2026-12-04T15:20:00Z", "timeout_s": 120}, "events": []}
source:
  description: The rendered C source.
  returned: when O(state=rendered)
  type: str
warnings_policy:
  description: Non-fatal findings of the policy validation (duplicates, risky defaults).
  returned: when the action plugin found any
  type: list
  elements: str
"""

import platform
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.respawn import has_respawned, probe_interpreters_for_module, respawn_module

from ansible_collections.bpfleet.core.plugins.module_utils import (
    _apply,
    _audit,
    _bcc_backend,
    _bpf_syscall,
    _features,
    _history,
    _live_edits,
    _lockout,
    _maps,
    _packing,
    _safe_files,
)
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils._rendered import RenderedPolicy
from ansible_collections.bpfleet.core.plugins.module_utils._runner import CommandError, CommandRunner


def _ensure_bcc(module):
    """BCC lives in the system Python: respawn there if this interpreter lacks it."""
    if _bcc_backend.HAS_BCC:
        return
    if not has_respawned():
        interpreter = probe_interpreters_for_module([_bcc_backend.SYSTEM_PYTHON], "bcc")
        if interpreter:
            respawn_module(interpreter)
    module.fail_json(msg=missing_required_lib("bcc (package %s)" % _bcc_backend.BCC_PACKAGE),
                     exception=_bcc_backend.BCC_IMPORT_ERROR)


# A delta of 100,000 prefixes must not become 100,000 diff lines: list the first few of
# each map and count the rest (the result's map_changes has the full counts).
DIFF_ENTRIES_PER_MAP = 20


def _entry_lines(map_name, keys):
    names = _maps.sample_texts(keys, DIFF_ENTRIES_PER_MAP)
    lines = ["%s %s\n" % (map_name, cidr) for cidr in names]
    if len(keys) > DIFF_ENTRIES_PER_MAP:
        lines.append("%s ... and %d more\n" % (map_name, len(keys) - DIFF_ENTRIES_PER_MAP))
    return lines


def _diff(name, rendered, plan):
    diffs = [{
        "before_header": "%s (applied)" % paths.program_file(name),
        "after_header": "%s (rendered)" % paths.program_file(name),
        "before": paths.read_text(paths.program_file(name)) or "",
        "after": rendered["source"],
    }]
    before_lines, after_lines = [], []
    for map_name, (upsert, remove) in sorted(plan.map_deltas.items()):
        before_lines.extend(_entry_lines(map_name, remove))
        after_lines.extend(_entry_lines(map_name, upsert))
    if before_lines or after_lines:
        diffs.append({"before_header": "map entries removed", "after_header": "map entries added",
                      "before": "".join(before_lines), "after": "".join(after_lines)})
    return diffs


def _effective_lists(module, rendered):
    """The lists the maps will hold: the policy's, with the kept live edits laid over them."""
    lists = rendered.lists
    if module.params["live_edits"] != "keep":
        return lists
    recorded = _live_edits.read(rendered["name"])
    return dict((name, _packing.EditedList(packed, recorded[name]["added"], recorded[name]["removed"]))
                for name, packed in lists.items())


def _guard_lockout(module, rendered):
    """Refuse a policy that would drop the controller's own SSH connection."""
    address, port = _lockout.controller_endpoint()
    if address is None:
        return {"controller": None, "dropped": False, "reason": "no SSH connection to guard"}
    lists = _effective_lists(module, rendered)
    dropped, reason = _lockout.verdict(address, rendered, port, lists)
    for limit in _lockout.rate_limits_on(address, rendered, port, lists):
        module.warn("the rate limit %s also counts the controller's SSH packets from %s; put the controller on "
                    "filter.allow to exempt it" % (limit, address))
    if dropped and not module.params["allow_lockout"]:
        module.fail_json(msg="lockout guard: this policy would drop the controller's SSH connection from %s (%s); "
                             "nothing was changed. Fix the policy, or set allow_lockout: true if the controller "
                             "will reach this host another way." % (address, reason),
                         lockout={"controller": str(address), "dropped": True, "reason": reason})
    return {"controller": str(address), "dropped": dropped, "reason": reason}


def _confirm(module, rendered):
    """Arm the commit-confirmed timer, or confirm a pending change by this new one."""
    timeout = module.params["confirm_timeout"]
    if not timeout:
        if _history.clear_pending(rendered["name"]):
            _history.record_event(rendered["name"], "confirm", reason="superseded by a change without confirm_timeout")
        return
    compile_fn = _bcc_backend.compile_and_pin if _bcc_backend.HAS_BCC else None
    _history.arm_confirm(module, rendered["name"], timeout, rendered["source_digest"], compile_fn)


def _kernel_features(module):
    """The probed (cached per kernel and boot) features with the mask applied; a kernel that
    lacks a required one stops here, before anything on the host has changed."""
    try:
        probed, cached = _features.probe(write_cache=not module.check_mode)
        features = _features.apply_mask(probed, module.params["mask_features"])
    except _features.MaskError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="probing the kernel's BPF features failed: %s" % exc)
    missing = _features.missing_required(features)
    _bpf_syscall.batch_ops_enabled = bool(features["map_batch_ops"]["available"])
    identity = _features.kernel_identity()
    if missing:
        module.fail_json(msg="host %s (kernel %s) cannot run bpfleet; nothing was changed. Missing: %s" % (
            platform.node(), identity["release"], "; ".join(missing)), missing_features=missing)
    return features, {"release": identity["release"], "probe_cached": cached,
                      "masked": sorted(module.params["mask_features"]),
                      "fallbacks": _features.fallbacks_in_use(features)}


def _check_sink(module, rendered):
    """The log file again, on the host, against the directories its role allows (docs/security.md)."""
    log = rendered.get("log") or {}
    if not log.get("enabled") or not log.get("file"):
        return
    dirs = _safe_files.host_sink_dirs()
    try:
        _safe_files.check_path(log["file"], dirs)
    except _safe_files.UnsafePath as exc:
        module.fail_json(msg="log.sink.file: %s (this host allows %s); nothing was changed"
                             % (exc, _safe_files.describe_dirs(dirs)))


def _audit_warn(module, problem):
    if problem:
        module.warn(problem)


def _present(module, runner, rendered):
    _check_sink(module, rendered)
    features, kernel = _kernel_features(module)
    lockout = _guard_lockout(module, rendered)
    host = _apply.PolicyHost(runner, rendered, force=module.params["force"],
                             live_edits_mode=module.params["live_edits"], features=features)
    kernel["features_digest"] = host.features_digest
    plan = host.plan()
    before = _audit.digests(rendered["name"])
    result = {
        "kernel": kernel,
        "changed": plan.changed,
        "lockout": lockout,
        "compiled": plan.compile,
        "plan": plan.summary(),
        "map_changes": [_maps.describe_delta(n, u, r) for n, (u, r) in sorted(plan.map_deltas.items()) if u or r],
        "policy": {"name": rendered["name"], "source_digest": rendered["source_digest"],
                   "maps_digest": rendered["maps_digest"]},
    }
    if module._diff and plan.changed:
        result["diff"] = _diff(rendered["name"], rendered, plan)
    if plan.changed and not module.check_mode:
        if plan.compile:
            _ensure_bcc(module)
        _history.before_apply(host)
        document = host.apply(plan, _bcc_backend.compile_and_pin)
        result["attachments"] = document.get("attach_modes", {})
        _history.after_apply(rendered["name"], rendered)
        _confirm(module, rendered)
        _audit_warn(module, _audit.record_change(
            "policy_apply", rendered["name"], before, module.params["audit_actor"],
            {"compiled": bool(plan.compile), "confirm_timeout": module.params["confirm_timeout"] or None,
             "force": module.params["force"], "allow_lockout": module.params["allow_lockout"]}))
    elif not module.check_mode:
        result["attachments"] = (host.state or {}).get("attach_modes", {})
        _history.after_apply(rendered["name"], rendered)
    if not module.check_mode:
        result["history"] = _history.summary(rendered["name"])
    result["commands"] = runner.commands
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path"),
            policy=dict(type="dict"),
            name=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent", "rendered"]),
            force=dict(type="bool", default=False),
            allow_lockout=dict(type="bool", default=False),
            live_edits=dict(type="str", default="keep", choices=["keep", "discard"]),
            confirm_timeout=dict(type="int", default=0),
            mask_features=dict(type="list", elements="str", default=[]),
            rendered=dict(type="dict"),
            audit_actor=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    state = module.params["state"]
    rendered = module.params["rendered"]
    if state == "rendered":
        module.fail_json(msg="state=rendered is handled on the controller by the action plugin")
    if state == "present" and not rendered:
        module.fail_json(msg="no rendered policy: call bpfleet.core.policy with src or policy (the action plugin "
                             "renders it); the module cannot be used without its action plugin")
    if rendered and "lists" in rendered:
        # The module echoes its arguments back (invocation): strip the packed megabytes there,
        # but keep them in the copy this run applies and records as the last good policy.
        echoed_lists = rendered["lists"]
        rendered = RenderedPolicy(dict(rendered, lists=dict((name, dict(packed))
                                                            for name, packed in echoed_lists.items())))
        try:
            rendered.decode_lists()
        except _packing.PackingError as exc:
            module.fail_json(msg="the rendered policy's lists are damaged: %s" % exc)
        _packing.strip_data(echoed_lists)
    if module.params["confirm_timeout"] and module.params["confirm_timeout"] < _history.MIN_CONFIRM_TIMEOUT:
        module.fail_json(msg="confirm_timeout must be 0 (off) or at least %d seconds" % _history.MIN_CONFIRM_TIMEOUT)
    runner = CommandRunner(module)
    try:
        if state == "absent":
            name = (rendered or {}).get("name") or module.params["name"]
            if not name:
                module.fail_json(msg="state=absent needs name, src or policy")
            host = _apply.PolicyHost(runner, {"name": name, "programs": [], "interfaces": []})
            before = _audit.digests(name)
            changed = host.remove()
            if changed and not module.check_mode:
                _audit_warn(module, _audit.record_change("policy_remove", name, before, module.params["audit_actor"]))
            module.exit_json(changed=changed, commands=runner.commands, policy={"name": name})
        result = _present(module, runner, rendered)
    except _bcc_backend.CompileError as exc:
        module.fail_json(msg="%s; the previous program stays attached" % exc, stage=exc.stage, log=exc.log,
                         commands=runner.commands)
    except _apply.PolicyFailure as exc:
        module.fail_json(msg=str(exc), commands=runner.commands, **exc.details)
    except CommandError as exc:
        module.fail_json(msg=str(exc), rc=exc.rc, stdout=exc.out, stderr=exc.err, commands=runner.commands)
    except OSError as exc:
        module.fail_json(msg="host operation failed: %s" % exc, exception=traceback.format_exc(),
                         commands=runner.commands)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
