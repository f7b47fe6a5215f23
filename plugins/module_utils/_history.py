# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Last good policy, rollback and commit-confirmed (docs/operations.md).

Files per policy under /var/lib/bpfleet/<name>/:
  applied.json   the rendered policy that is applied now (without the C source: program.c)
  good/          the last good policy: rendered.json (with source), state.json, map_ids.json
  pending.json   a commit-confirmed change waiting for bpfleet.core.policy_confirm
  events.jsonl   rollbacks and confirmations, one JSON object a line
Pins: /sys/fs/bpf/bpfleet/<name>/<pin>_good hold the last good programs, so a rollback
re-attaches them without compiling. The maps are shared by old and new programs; the good
programs can only be reused while the pinned maps are the very maps they were loaded with
(same map ids), else the rollback recompiles the recorded source.

"Good" means: applied and not waiting for a confirmation. A change applied while another
one waits for its confirmation leaves the last good policy as it was.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import signal
import time
import uuid

from ansible_collections.bpfleet.core.plugins.module_utils import _apply, _audit
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils import _maps as maps
from ansible_collections.bpfleet.core.plugins.module_utils._runner import CommandRunner

GOOD_SUFFIX = "_good"
# How often the confirm timer looks at pending.json: a confirmation ends it within this.
TIMER_POLL_S = 0.5
MIN_CONFIRM_TIMEOUT = 5


class NoGoodPolicy(Exception):
    pass


applied_file = paths.applied_file


def good_dir(name):
    return os.path.join(paths.state_dir(name), "good")


def pending_file(name):
    return os.path.join(paths.state_dir(name), "pending.json")


def events_file(name):
    return os.path.join(paths.state_dir(name), "events.jsonl")


def timer_log(name):
    return "/var/log/bpfleet/confirm-%s.log" % name


def good_pin(name, pin):
    return paths.prog_pin(name, pin + GOOD_SUFFIX)


def _write_json(path, document):
    paths.write_atomic(path, json.dumps(document, indent=1, sort_keys=True) + "\n", mode=0o600)


def record_event(name, kind, **details):
    event = dict(details, event=kind, at=_apply._now(), at_unix=round(time.time(), 3))
    directory = paths.state_dir(name)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    with open(events_file(name), "a") as handle:
        handle.write(json.dumps(event, sort_keys=True) + "\n")
    return event


def last_events(name, count=5):
    text = paths.read_text(events_file(name)) or ""
    events = []
    for line in text.splitlines()[-count:]:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def pending(name):
    return paths.read_json(pending_file(name))


def good(name):
    """The last good rendered policy, or None."""
    return paths.read_json(os.path.join(good_dir(name), "rendered.json"))


def _map_ids(name, specs):
    ids = {}
    for spec in specs:
        fd = maps.open_pinned(paths.map_pin(name, spec["name"]))
        if fd is None:
            continue
        try:
            ids[spec["name"]] = bpf.map_info(fd)["id"]
        finally:
            os.close(fd)
    return ids


def summary(name):
    """What the facts and results report about history for one policy."""
    last_good = good(name)
    wait = pending(name)
    return {
        "good": {"source_digest": last_good["source_digest"], "maps_digest": last_good["maps_digest"],
                 "applied_at": last_good.get("applied_at")} if last_good else None,
        "pending": wait,
        "events": last_events(name),
    }


# ---- around an apply --------------------------------------------------------------------

def before_apply(host):
    """Keep what is applied now as the last good policy, before it is replaced.

    Only when the digests change (a drift repair re-applies the same policy) and only when
    the applied policy is not itself waiting for a confirmation.
    """
    name = host.name
    state = host.state or {}
    applied = paths.read_json(applied_file(name))
    if not state or not applied or pending(name):
        return False
    if (state.get("source_digest"), state.get("maps_digest")) == (
            host.rendered["source_digest"], host.rendered["maps_digest"]):
        return False
    if applied.get("source_digest") != state.get("source_digest"):
        return False  # applied.json is stale (written by another version): no trustworthy snapshot
    for program in applied["programs"]:
        if not os.path.exists(paths.prog_pin(name, program["pin"])):
            return False
    directory = good_dir(name)
    staging = directory + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, 0o700)
    document = dict(applied, source=paths.read_text(paths.program_file(name)) or "",
                    applied_at=state.get("applied_at"))
    _write_json(os.path.join(staging, "rendered.json"), document)
    _write_json(os.path.join(staging, "state.json"), state)
    _write_json(os.path.join(staging, "map_ids.json"), _map_ids(name, applied["maps"]))
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(staging, directory)
    _pin_good(name, [p["pin"] for p in applied["programs"]])
    return True


def _pin_good(name, pins):
    """Pin the programs now at <pin> also as <pin>_good (a second name of the same program)."""
    for pin in pins:
        target = good_pin(name, pin)
        if os.path.exists(target):
            os.unlink(target)
        fd = bpf.obj_get(paths.prog_pin(name, pin))
        try:
            bpf.obj_pin(fd, target)
        finally:
            os.close(fd)
    pin_dir = paths.pin_dir(name)
    for entry in os.listdir(pin_dir):
        if entry.endswith(GOOD_SUFFIX) and entry[:-len(GOOD_SUFFIX)] not in pins:
            os.unlink(os.path.join(pin_dir, entry))


def _applied_id(rendered):
    return "%s %s\n" % (rendered["source_digest"], rendered["maps_digest"])


def after_apply(name, rendered):
    """Record the rendered policy now applied (the C source is in program.c already).

    applied.json holds every list entry (it can be tens of MB): a small id file next to it
    saves reading it back on every unchanged run.
    """
    id_file = applied_file(name) + ".id"
    if paths.read_text(id_file) == _applied_id(rendered) and os.path.exists(applied_file(name)):
        return
    # The packed transfer form of the lists stays, so a rollback re-applies exactly these lists.
    document = dict(rendered)
    document.pop("source", None)
    _write_json(applied_file(name), document)
    paths.write_atomic(id_file, _applied_id(rendered), mode=0o600)


def clear_pending(name):
    try:
        os.unlink(pending_file(name))
        return True
    except OSError:
        return False


# ---- rollback -----------------------------------------------------------------------------

def _forbidden_compile(*_args):
    raise _apply.PolicyFailure("internal error: a rollback to pinned programs tried to compile")


def _reusable(name, last_good):
    """Why the pinned good programs cannot be re-attached as they are, or None when they can."""
    for program in last_good["programs"]:
        if maps.pinned_prog_info(good_pin(name, program["pin"])) is None:
            return "pinned program %s%s is gone" % (program["pin"], GOOD_SUFFIX)
    recorded = paths.read_json(os.path.join(good_dir(name), "map_ids.json")) or {}
    live = _map_ids(name, last_good["maps"])
    for map_name, map_id in sorted(recorded.items()):
        if live.get(map_name) != map_id:
            return "map %s was recreated since (id %s, the good program uses %s)" % (
                map_name, live.get(map_name), map_id)
    return None


def rollback(runner, name, compile_and_pin=None, check_mode=False, reason="on demand"):
    """Bring the policy back to its last good version. Returns a result dict."""
    last_good = good(name)
    if not last_good:
        raise NoGoodPolicy("policy %r has no last good version recorded on this host (one is kept from the second "
                           "successful apply on)" % name)
    state = paths.read_json(paths.state_file(name)) or {}
    good_state = paths.read_json(os.path.join(good_dir(name), "state.json")) or {}
    target = {"source_digest": last_good["source_digest"], "maps_digest": last_good["maps_digest"]}
    at_good = (state.get("source_digest"), state.get("maps_digest")) == (
        target["source_digest"], target["maps_digest"])
    why_not = _reusable(name, last_good)
    reuse = why_not is None
    result = {"policy": dict(target, name=name), "rolled_back_from": {
        "source_digest": state.get("source_digest"), "maps_digest": state.get("maps_digest")},
        "reused_pins": reuse, "compiled": False, "reason": reason}
    if not reuse:
        result["recompile_reason"] = why_not

    if at_good:
        host = _apply.PolicyHost(runner, last_good)
        plan = host.plan()
        result["plan"] = plan.summary()
        result["compiled"] = plan.compile
        result["changed"] = plan.changed
        if plan.changed and not check_mode:
            host.apply(plan, compile_and_pin or _forbidden_compile)
        if not check_mode and clear_pending(name):
            result["changed"] = True
        return result

    result["changed"] = True
    if check_mode:
        plan_lines = ["re-attach the last good programs (pinned as *%s)" % GOOD_SUFFIX if reuse else
                      "compile the last good source again: %s" % why_not]
        result["plan"] = plan_lines
        result["compiled"] = not reuse
        return result

    if reuse:
        for program in last_good["programs"]:
            final = paths.prog_pin(name, program["pin"])
            fd = bpf.obj_get(good_pin(name, program["pin"]))
            try:
                if os.path.exists(final):
                    os.unlink(final)
                bpf.obj_pin(fd, final)
            finally:
                os.close(fd)
        wanted = set(p["pin"] for p in last_good["programs"])
        for program in state.get("programs") or []:
            if program["pin"] not in wanted and os.path.exists(paths.prog_pin(name, program["pin"])):
                os.unlink(paths.prog_pin(name, program["pin"]))
        document = dict(good_state)
        # Interfaces of the rolled-back version stay in the record until the apply below
        # detaches what the good version does not use.
        document["interfaces"] = sorted(set(state.get("interfaces") or []) | set(good_state.get("interfaces") or []))
        document["attach_modes"] = state.get("attach_modes") or {}
        document["created_clsact"] = state.get("created_clsact") or []
        _write_json(paths.state_file(name), document)
        paths.write_atomic(paths.program_file(name), last_good["source"])
        compile_fn = _forbidden_compile
    else:
        if compile_and_pin is None:
            raise _apply.PolicyFailure("rollback of %r needs a compile (%s) and BCC is not available" % (name, why_not))
        compile_fn = compile_and_pin
    host = _apply.PolicyHost(runner, last_good)
    plan = host.plan()
    result["plan"] = plan.summary()
    result["compiled"] = plan.compile
    if plan.compile and reuse:
        raise _apply.PolicyFailure("rollback: the pinned good programs do not match the record (%s)" %
                                   "; ".join(plan.compile_reasons))
    host.apply(plan, compile_fn)
    after_apply(name, last_good)
    clear_pending(name)
    result["attachments"] = (host.state or {}).get("attach_modes", {})
    result["prog_ids"] = dict((p["hook"], (maps.pinned_prog_info(paths.prog_pin(name, p["pin"])) or {}).get("id"))
                              for p in last_good["programs"])
    record_event(name, "rollback", reason=reason, to=target, rolled_back_from=result["rolled_back_from"],
                 compiled=result["compiled"])
    return result


# ---- commit-confirmed ---------------------------------------------------------------------

def arm_confirm(module, name, timeout, source_digest, compile_and_pin=None):
    """Write pending.json and start the timer that rolls back unless confirmed in time.

    The timer keeps using `module` (its run_command) after the module has answered: it is a
    copy of this process, so the object is there, only its files are gone.
    """
    token = uuid.uuid4().hex
    deadline = time.time() + timeout
    document = {"token": token, "timeout_s": timeout, "deadline_unix": round(deadline, 3),
                "deadline": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline)),
                "source_digest": source_digest, "armed_at": _apply._now()}
    _write_json(pending_file(name), document)
    document["timer_pid"] = _spawn_timer(module, name, token, deadline, compile_and_pin)
    _write_json(pending_file(name), document)
    return document


def _spawn_timer(module, name, token, deadline, compile_and_pin):
    """Double fork: the timer must outlive this module and the SSH session that ran it.

    Everything it needs is imported already (the module's files are deleted when the module
    exits), and it closes every inherited descriptor so the SSH channel can end.
    """
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end) as handle:
            text = handle.read().strip()
        return int(text) if text.isdigit() else None
    try:
        os.close(read_end)
        os.setsid()
        second = os.fork()
        if second:
            os.write(write_end, str(second).encode())
            os._exit(0)
        os.close(write_end)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log_path = timer_log(name)
        if not os.path.isdir(os.path.dirname(log_path)):
            os.makedirs(os.path.dirname(log_path), 0o750)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, 65536)
        os.chdir("/")
        code = _timer(module, name, token, deadline, compile_and_pin)
    except BaseException:  # the child must never return into the module's code
        code = 1
    os._exit(code)


def _log(message):
    os.write(1, ("%s %s\n" % (_apply._now(), message)).encode())


def _timer(module, name, token, deadline, compile_and_pin):
    _log("confirm timer for %s armed (pid %d), deadline in %.0f s" % (name, os.getpid(), deadline - time.time()))
    while time.time() < deadline:
        current = pending(name)
        if not current or current.get("token") != token:
            _log("confirmed or superseded; nothing to do")
            return 0
        time.sleep(min(TIMER_POLL_S, max(0.0, deadline - time.time())))
    current = pending(name)
    if not current or current.get("token") != token:
        _log("confirmed or superseded at the deadline; nothing to do")
        return 0
    before = _audit.digests(name)
    try:
        result = rollback(CommandRunner(module), name, compile_and_pin, reason="confirm timeout (%ss) expired" %
                          current.get("timeout_s"))
    except Exception as exc:  # logged, and recorded where the facts show it
        _log("rollback failed: %s" % exc)
        record_event(name, "rollback_failed", reason="confirm timeout expired", error=str(exc))
        return 1
    _log("rolled back to %s: %s" % (result["policy"]["source_digest"], "; ".join(result.get("plan", []))))
    problem = _audit.record_change("timer_rollback", name, before, None,
                                   {"reason": "confirm timeout (%ss) expired" % current.get("timeout_s")})
    if problem:
        _log(problem)
    return 0
