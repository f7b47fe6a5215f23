# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bring a host to a rendered policy: decide first, then act (only outside check mode).

The decision looks at both what was recorded (state.json digests) and what the kernel has
now (pins, map shapes, map entries, attachments): a recorded digest alone would miss a
program detached behind our back, and live state alone cannot tell a stale program apart.

Order of a change, chosen so traffic never meets a half-built filter:
  1. compile and verify the new programs while the old ones keep running (pinned as *_next)
  2. update the list maps by delta (the maps are shared by old and new programs)
  3. atomically replace the attachments (ip -force link set ... pinned, tc filter replace)
  4. move the new pins into place, record state
A compile or verifier failure stops at step 1 and leaves everything attached as it was.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import json
import os
import shutil

from ansible_collections.bpfleet.core.plugins.module_utils import _attach as attach
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _features
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils import _live_edits as live_edits
from ansible_collections.bpfleet.core.plugins.module_utils import _maps as maps
from ansible_collections.bpfleet.core.plugins.module_utils._rendered import RenderedPolicy

# bpffs refuses names with a dot, so the staged pins use an underscore suffix.
NEXT_SUFFIX = "_next"
ALL_INTERFACES = "all"  # _policy.ALL_INTERFACES; module_utils here do not import the schema


class PolicyFailure(Exception):
    """A refusal or failure with a message meant for the operator."""

    def __init__(self, message, **details):
        self.details = details
        super(PolicyFailure, self).__init__(message)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_shape_ok(path, spec):
    """None when not pinned, True when the pinned map has the expected shape, else a reason."""
    fd = maps.open_pinned(path)
    if fd is None:
        return None
    try:
        info = bpf.map_info(fd)
    finally:
        os.close(fd)
    for field in ("type", "key_size", "value_size", "max_entries"):
        if info.get(field) != spec[field]:
            return "%s is %s, expected %s" % (field, info.get(field), spec[field])
    return True


class Plan:
    """What must change on this host for one policy; built without side effects."""

    def __init__(self):
        self.compile = False
        self.compile_reasons = []
        self.recreate_maps = {}  # map name -> reason
        self.map_deltas = {}  # map name -> (upsert dict, remove list)
        self.xdp = {}  # iface -> reason
        self.tc = {}  # (iface, direction) -> reason
        self.detach = []  # (iface, hook) no longer wanted
        self.unpin = []  # program pins no longer wanted
        self.write_state = False
        self.live_edits = None  # the live edits record to write, when it changes (_live_edits)

    @property
    def changed(self):
        return bool(self.compile or self.recreate_maps or any(u or r for u, r in self.map_deltas.values())
                    or self.xdp or self.tc or self.detach or self.unpin or self.write_state
                    or self.live_edits is not None)

    def summary(self):
        lines = []
        if self.compile:
            lines.append("compile and load: " + "; ".join(self.compile_reasons))
        for name, reason in sorted(self.recreate_maps.items()):
            lines.append("recreate map %s (%s): its counters or entries start empty" % (name, reason))
        for name, (upsert, remove) in sorted(self.map_deltas.items()):
            if upsert or remove:
                lines.append("map %s: %d entries to add or update, %d to remove" % (name, len(upsert), len(remove)))
        for iface, reason in sorted(self.xdp.items()):
            lines.append("attach XDP on %s: %s" % (iface, reason))
        for (iface, direction), reason in sorted(self.tc.items()):
            lines.append("attach tc %s on %s: %s" % (direction, iface, reason))
        for iface, hook in self.detach:
            lines.append("detach %s from %s (no longer in the policy)" % (hook, iface))
        for pin in self.unpin:
            lines.append("remove program pin %s" % pin)
        if self.live_edits is not None:
            lines.append("update the live edits record (%s)" % ", ".join(
                "%s +%d -%d" % (name, len(entry["added"]), len(entry["removed"]))
                for name, entry in sorted(self.live_edits.items()) if entry["added"] or entry["removed"])
                or "no live edits left")
        if self.write_state and not lines:
            lines.append("record the applied policy state")
        return lines


class PolicyHost:
    def __init__(self, runner, rendered, force=False, live_edits_mode="keep", features=None):
        self.runner = runner
        # The probed (and possibly masked) kernel features this host compiles for: they are
        # part of what the program is, so a change of them (a new kernel) recompiles.
        self.features = features
        self.features_header = _features.header(features) if features is not None else None
        self.features_digest = (_features.header_digest(self.features_header)
                                if self.features_header is not None else None)
        self.live_edits_mode = live_edits_mode
        self.rendered = RenderedPolicy.of(rendered).replaced()
        if rendered.get("interfaces") == [ALL_INTERFACES]:
            self.rendered["interfaces"] = attach.all_interfaces(runner)
            if not self.rendered["interfaces"]:
                raise PolicyFailure("interfaces: all, but this host has no interface besides lo")
        self.name = rendered["name"]
        self.force = force
        self.xdp_modes_tried = {}
        self.state = paths.read_json(paths.state_file(self.name))
        self.prog_by_hook = dict((p["hook"], p) for p in rendered["programs"])

    # ---- deciding -------------------------------------------------------------------------

    def plan(self):
        plan = Plan()
        state = self.state or {}
        desired = self.rendered
        if not state:
            plan.compile_reasons.append("policy not applied on this host yet")
        elif state.get("source_digest") != desired["source_digest"]:
            plan.compile_reasons.append("program source changed (%s -> %s)" % (
                state.get("source_digest", "none")[:19], desired["source_digest"][:19]))
        elif self.features_digest is not None and state.get("features_digest") != self.features_digest:
            plan.compile_reasons.append("kernel features changed (%s -> %s)" % (
                (state.get("features_digest") or "none")[:19], self.features_digest[:19]))

        for spec in desired["maps"]:
            shape = _map_shape_ok(paths.map_pin(self.name, spec["name"]), spec)
            if shape is None:
                if state:
                    plan.compile_reasons.append("map %s is not pinned" % spec["name"])
            elif shape is not True:
                plan.recreate_maps[spec["name"]] = shape
                plan.compile_reasons.append("map %s has another shape (%s)" % (spec["name"], shape))

        pinned_ids = {}
        for program in desired["programs"]:
            info = maps.pinned_prog_info(paths.prog_pin(self.name, program["pin"]))
            prog_id = info["id"] if info else None
            if prog_id is None and state:
                plan.compile_reasons.append("program pin %s is missing" % program["pin"])
            pinned_ids[program["hook"]] = prog_id
        plan.compile = bool(plan.compile_reasons)

        self._plan_maps(plan)
        self._plan_attachments(plan, pinned_ids)

        wanted_pins = set(p["pin"] for p in desired["programs"])
        for old in (state.get("programs") or []):
            if old["pin"] not in wanted_pins and os.path.exists(paths.prog_pin(self.name, old["pin"])):
                plan.unpin.append(old["pin"])
        if self._state_document(None) != self._comparable_state(state):
            plan.write_state = True
        return plan

    def _plan_maps(self, plan):
        """Deltas of the list maps: the policy's entries with the recorded live edits laid over
        them (live_edits_mode keep) or without them (discard), against what the maps hold."""
        lists = self.rendered.lists
        recorded = live_edits.read(self.name)
        pruned = live_edits.empty()
        for map_name in maps.LIST_MAPS:
            spec = next(s for s in self.rendered["maps"] if s["name"] == map_name)
            packed = lists[map_name]
            desired = packed.key_list()
            if self.live_edits_mode == "keep":
                desired, pruned[map_name] = live_edits.overlay(desired, recorded[map_name])
            fd = None
            if map_name not in plan.recreate_maps:
                fd = maps.open_pinned(paths.map_pin(self.name, map_name))
            if fd is None:
                live = ([], b"")
            else:
                try:
                    live = maps.live_keys(fd, spec["key_size"], spec["value_size"])
                finally:
                    os.close(fd)
            plan.map_deltas[map_name] = maps.delta(live, desired, packed.value())
        if pruned != recorded:
            plan.live_edits = pruned

    def _interface_owners(self):
        """Interfaces claimed by the other policies applied on this host."""
        owners = {}
        for other in paths.applied_policies():
            if other != self.name:
                for iface in (paths.read_json(paths.state_file(other)) or {}).get("interfaces", []):
                    owners[iface] = other
        return owners

    def _plan_attachments(self, plan, pinned_ids):
        desired_ifaces = self.rendered["interfaces"]
        wanted_mode = self.rendered["xdp_mode"]
        owners = self._interface_owners()
        for iface in desired_ifaces:
            # One XDP program per interface: two policies on one interface would replace
            # each other's program on every run.
            if iface in owners:
                raise PolicyFailure("interface %s is already used by policy %r on this host; remove it from one "
                                    "of the two policies (or remove %r with state: absent)" % (
                                        iface, owners[iface], owners[iface]))
            try:
                current = attach.xdp_attachment(self.runner, iface)
            except attach.InterfaceMissing as exc:
                raise PolicyFailure(str(exc)) from exc
            if current and not current["name"].startswith(attach.OWN_PROGRAM_PREFIX) and not self.force:
                raise PolicyFailure(
                    "interface %s already has a foreign XDP program (id %s, name %r, %s mode); refusing to "
                    "replace it. Remove it, or set force: true to replace it." % (
                        iface, current["prog_id"], current["name"], current["mode"]))
            if plan.compile:
                plan.xdp[iface] = "new program version"
            elif current is None:
                plan.xdp[iface] = "not attached"
            elif current["prog_id"] != pinned_ids.get("xdp"):
                plan.xdp[iface] = "attached program %s is not the pinned one" % current["prog_id"]
            elif wanted_mode != "auto" and current["mode"] != wanted_mode:
                plan.xdp[iface] = "attached in %s mode, policy wants %s" % (current["mode"], wanted_mode)
            for direction in ("ingress", "egress"):
                hook = "tc-" + direction
                current_tc = attach.tc_attachment(self.runner, iface, direction)
                if hook not in self.prog_by_hook:
                    if current_tc and current_tc["name"].startswith(attach.OWN_PROGRAM_PREFIX):
                        plan.detach.append((iface, hook))
                    continue
                if plan.compile:
                    plan.tc[(iface, direction)] = "new program version"
                elif current_tc is None:
                    plan.tc[(iface, direction)] = "not attached"
                elif current_tc["prog_id"] != pinned_ids.get(hook):
                    plan.tc[(iface, direction)] = "attached program %s is not the pinned one" % current_tc["prog_id"]
        for iface in (self.state or {}).get("interfaces", []):
            if iface not in desired_ifaces:
                plan.detach.append((iface, "all"))

    # ---- acting ---------------------------------------------------------------------------

    def apply(self, plan, compile_and_pin):
        """Carry out a plan. `compile_and_pin(source, programs, pin_dir, suffix)` is the backend."""
        pin_dir = paths.pin_dir(self.name)
        if not paths.bpffs_mounted():
            raise PolicyFailure("no bpf filesystem at /sys/fs/bpf: pins need it (the bpfleet.core.host role "
                                "mounts it)")
        if not os.path.isdir(os.path.join(pin_dir, "maps")):
            os.makedirs(os.path.join(pin_dir, "maps"), 0o700)
        for map_name in plan.recreate_maps:
            os.unlink(paths.map_pin(self.name, map_name))

        new_pins = {}
        if plan.compile:
            if self.features_header is None:
                new_pins = compile_and_pin(self.rendered["source"], self.rendered["programs"], pin_dir, NEXT_SUFFIX)
            else:
                new_pins = compile_and_pin(self.rendered["source"], self.rendered["programs"], pin_dir, NEXT_SUFFIX,
                                           features_header=self.features_header)

        for map_name, upsert, remove in maps.write_order(plan.map_deltas):
            fd = bpf.obj_get(paths.map_pin(self.name, map_name))
            try:
                maps.apply_delta(fd, upsert, remove)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # Only when removals that overlap new entries must wait for them (write_order).
                raise PolicyFailure("%s is full: this change adds %d entries while old entries they overlap must "
                                    "stay until they are in (no gap for addresses both lists deny), and the map "
                                    "cannot hold both (%s). Apply it in two runs: first without the old entries "
                                    "(their addresses pass in between), then with the new ones"
                                    % (map_name, len(upsert), exc)) from exc
            finally:
                os.close(fd)

        attach_mode = dict((self.state or {}).get("attach_modes") or {})
        created_clsact = set((self.state or {}).get("created_clsact") or [])
        for iface in sorted(plan.xdp):
            program = self.prog_by_hook["xdp"]
            path = new_pins.get(program["pin"]) or paths.prog_pin(self.name, program["pin"])
            attach_mode[iface] = self._attach_xdp(iface, path)
        for (iface, direction) in sorted(plan.tc):
            program = self.prog_by_hook["tc-" + direction]
            path = new_pins.get(program["pin"]) or paths.prog_pin(self.name, program["pin"])
            if attach.ensure_clsact(self.runner, iface):
                created_clsact.add(iface)
            attach.attach_tc(self.runner, iface, direction, path)

        for pin, path in new_pins.items():
            final = paths.prog_pin(self.name, pin)
            if os.path.exists(final):
                os.unlink(final)
            os.rename(path, final)
        for pin in plan.unpin:
            os.unlink(paths.prog_pin(self.name, pin))

        for iface, hook in plan.detach:
            self._detach(iface, hook, iface in created_clsact)
            if hook == "all":
                attach_mode.pop(iface, None)
                created_clsact.discard(iface)

        document = self._state_document(_now())
        document["attach_modes"] = attach_mode
        document["created_clsact"] = sorted(created_clsact)
        # Per interface: its driver and the XDP modes it accepted or refused at the last attach.
        xdp_modes = dict((self.state or {}).get("xdp_modes_tried") or {})
        xdp_modes.update(self.xdp_modes_tried)
        document["xdp_modes_tried"] = dict((iface, entry) for iface, entry in xdp_modes.items()
                                           if iface in self.rendered["interfaces"])
        if plan.live_edits is not None:
            live_edits.write(self.name, plan.live_edits)
        paths.write_atomic(paths.program_file(self.name), self.rendered["source"])
        if self.features_header is not None:
            paths.write_atomic(paths.features_file(self.name), self.features_header)
        paths.write_atomic(paths.state_file(self.name), json.dumps(document, indent=2, sort_keys=True) + "\n")
        self.state = document
        return document

    def _attach_xdp(self, iface, path):
        mode = self.rendered["xdp_mode"]
        current = attach.xdp_attachment(self.runner, iface)
        modes = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        tried = self.xdp_modes_tried.setdefault(iface, {"driver": attach.driver_of(self.runner, iface)})
        for candidate in modes:
            # The kernel refuses native and generic at once: switching modes needs a detach
            # first, the one case with a short gap (reported in the plan as a mode change).
            if current and current["mode"] != candidate:
                attach.detach_xdp(self.runner, iface, current["mode"])
                current = None
            rc, _stdout, err = attach.attach_xdp(self.runner, iface, candidate, path, check_rc=False)
            # What the driver accepted is learnt here, by the attach itself: a probe attach
            # would disturb an interface that carries traffic.
            tried[candidate] = "ok" if rc == 0 else (err.strip() or "refused (rc %d)" % rc)
            if rc == 0:
                return candidate
            errors.append("%s: %s" % (candidate, err.strip()))
        raise PolicyFailure("could not attach XDP on %s (%s)" % (iface, "; ".join(errors)))

    def _detach(self, iface, hook, remove_clsact):
        try:
            current = attach.xdp_attachment(self.runner, iface)
        except attach.InterfaceMissing:
            return
        if hook in ("all", "xdp") and current and current["name"].startswith(attach.OWN_PROGRAM_PREFIX):
            attach.detach_xdp(self.runner, iface, current["mode"])
        for direction in ("ingress", "egress"):
            if hook in ("all", "tc-" + direction):
                tc = attach.tc_attachment(self.runner, iface, direction)
                if tc and tc["name"].startswith(attach.OWN_PROGRAM_PREFIX):
                    attach.detach_tc(self.runner, iface, direction)
        if hook == "all" and remove_clsact and attach.has_clsact(self.runner, iface):
            if not (attach.tc_filter_count(self.runner, iface, "ingress")
                    or attach.tc_filter_count(self.runner, iface, "egress")):
                attach.remove_clsact(self.runner, iface)

    def remove(self):
        """state=absent: detach what is ours, remove pins and records. Returns True if anything existed."""
        state = self.state
        pin_dir = paths.pin_dir(self.name)
        existed = bool(state) or os.path.isdir(pin_dir)
        if not existed:
            return False
        created = set((state or {}).get("created_clsact") or [])
        for iface in (state or {}).get("interfaces", []):
            self._detach(iface, "all", iface in created)
        if not self.runner.module.check_mode:
            if os.path.isdir(pin_dir):
                shutil.rmtree(pin_dir)
            if os.path.isdir(paths.state_dir(self.name)):
                shutil.rmtree(paths.state_dir(self.name))
        return True

    # ---- state documents ------------------------------------------------------------------

    def _state_document(self, applied_at):
        rendered = self.rendered
        return {
            "schema": paths.STATE_SCHEMA,
            "name": self.name,
            "source_digest": rendered["source_digest"],
            "maps_digest": rendered["maps_digest"],
            "features_digest": self._recorded_or_own("features_digest", self.features_digest),
            "fallbacks": self._recorded_or_own(
                "fallbacks", sorted(_features.fallbacks_in_use(self.features)) if self.features is not None else None),
            "applied_at": applied_at,
            "interfaces": rendered["interfaces"],
            "xdp_mode": rendered["xdp_mode"],
            "programs": rendered["programs"],
            "rules": rendered["rules"],
            "rule_details": rendered.get("rule_details", []),
            "log": rendered["log"],
        }

    def _recorded_or_own(self, key, own):
        """Without probed features (a rollback reusing its pins), the program keeps the
        features it was compiled with: keep what the record says."""
        if self.features is not None:
            return own
        return (self.state or {}).get(key)

    def _comparable_state(self, state):
        """The recorded state without what only a real apply knows (time, modes, clsact)."""
        if not state:
            return None
        keep = dict(state)
        keep["applied_at"] = None
        keep.pop("attach_modes", None)
        keep.pop("created_clsact", None)
        keep.pop("xdp_modes_tried", None)
        return keep
