# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live status of bpfleet on a host, for the facts module (docs/facts.md).

Everything is read from the kernel and the agent's files at call time; nothing is cached.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import platform
import socket
import time

from ansible_collections.bpfleet.core.plugins.module_utils import _attach as attach
from ansible_collections.bpfleet.core.plugins.module_utils import _audit as audit
from ansible_collections.bpfleet.core.plugins.module_utils import _features as features_probe
from ansible_collections.bpfleet.core.plugins.module_utils import _health as health_model
from ansible_collections.bpfleet.core.plugins.module_utils import _history as history
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.module_utils import _live_edits as live_edits
from ansible_collections.bpfleet.core.plugins.module_utils import _maps as maps

# The agent rewrites its status about once a second; older than this means it is stuck.
AGENT_STATUS_STALE_S = health_model.DEFAULTS["status_stale_s"]


def kernel_status():
    release = platform.release()
    build = "/lib/modules/%s/build" % release
    headers = {"path": build, "target": None, "kind": "missing"}
    if os.path.exists(build):
        target = os.path.realpath(build)
        headers["target"] = target
        # Debian's exact package installs /usr/src/linux-headers-<release>; anything else
        # (the role's fallback to the distribution's generic headers) is reported as such.
        headers["kind"] = "exact" if os.path.basename(target) == "linux-headers-%s" % release else "fallback"
        if headers["kind"] == "fallback":
            headers["version"] = os.path.basename(target).replace("linux-headers-", "")
    status = {
        "release": release,
        "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
        "bpffs": paths.bpffs_mounted(),
        "headers": headers,
        "bcc_version": bcc_version(),
    }
    status.update(kernel_features())
    return status


# Where Debian's python3-bpfcc keeps its version: read as text, so the facts never load BCC.
BCC_VERSION_FILES = ("/usr/lib/python3/dist-packages/bcc/version.py",)


def bcc_version():
    for path in BCC_VERSION_FILES:
        text = paths.read_text(path) or ""
        for line in text.splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    return None


def kernel_features():
    """The probed features (docs/compatibility.md): {name: bool}, why each missing one is
    missing, the fallbacks the programs use, and the required features the kernel lacks."""
    try:
        # Read-only, as facts must be: a cached answer is used, a fresh one is not stored.
        probed, cached = features_probe.probe(write_cache=False)
    except OSError as exc:
        return {"features": None, "features_error": str(exc)}
    return {
        "features": dict((name, result["available"]) for name, result in sorted(probed.items())),
        "features_missing": dict((name, result["reason"]) for name, result in sorted(probed.items())
                                 if not result["available"]),
        "fallbacks": features_probe.fallbacks_in_use(probed),
        "unsupported": features_probe.missing_required(probed),
        "probe_cached": cached,
    }


def _pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def agent_status(status):
    """The agent's state from its status file (already read) and its pidfile."""
    pidfile = paths.read_text(paths.AGENT_PIDFILE)
    supervisor_pid = int(pidfile.strip()) if pidfile and pidfile.strip().isdigit() else None
    worker_pid = status.get("pid")
    updated = status.get("updated_at_unix")
    age = round(time.time() - updated, 1) if isinstance(updated, (int, float)) else None
    alive = _pid_alive(worker_pid)
    running = alive and (age is None or age < AGENT_STATUS_STALE_S)
    return {
        # running; stale: the process lives but has not written its status for 15 s; stopped.
        "state": "running" if running else ("stale" if alive else "stopped"),
        "mode": status.get("mode") if alive else None,
        "textfile": status.get("textfile"),
        "running": bool(running),
        "pid": worker_pid if running else None,
        "supervisor_pid": supervisor_pid if _pid_alive(supervisor_pid) else None,
        "version": status.get("version"),
        "started_at": status.get("started_at"),
        "status_age_s": age,
        "records_malformed": status.get("records_malformed", 0),
    }


def attachments(runner, name, state):
    """Each expected attachment with what the kernel has; `ok` false means drift."""
    result = []
    drift = []
    programs = dict((p["hook"], p) for p in state.get("programs", []))
    modes = state.get("attach_modes") or {}
    for iface in state.get("interfaces", []):
        for hook, program in sorted(programs.items()):
            expected = maps.pinned_prog_info(paths.prog_pin(name, program["pin"]))
            entry = {"iface": iface, "hook": hook, "pin": paths.prog_pin(name, program["pin"]),
                     "expected_prog_id": expected["id"] if expected else None}
            try:
                if hook == "xdp":
                    live = attach.xdp_attachment(runner, iface)
                else:
                    live = attach.tc_attachment(runner, iface, hook[len("tc-"):])
            except attach.InterfaceMissing:
                live = None
                entry["error"] = "interface missing"
            entry["attached"] = live is not None
            entry["prog_id"] = live["prog_id"] if live else None
            entry["tag"] = live["tag"] if live else None
            entry["prog_name"] = live["name"] if live else None
            if hook == "xdp":
                entry["mode"] = live["mode"] if live else None
                entry["expected_mode"] = modes.get(iface)
            entry["ok"] = bool(live and expected and live["prog_id"] == expected["id"])
            if not entry["ok"]:
                if not expected:
                    drift.append("%s: pinned program %s is missing" % (iface, program["pin"]))
                elif not live:
                    drift.append("%s: %s program is not attached" % (iface, hook))
                else:
                    drift.append("%s: %s has program %s (%s), expected %s" % (
                        iface, hook, live["prog_id"], live["name"], expected["id"]))
            result.append(entry)
    return result, drift


def log_status(state, agent_policies, agent=None):
    log = state.get("log") or {}
    path = log.get("file")
    entry = {"enabled": bool(log.get("enabled")), "path": path, "fields": log.get("fields", []),
             "records_written": 0, "bytes_written": 0, "records_lost_user": 0, "records_recovered": 0,
             "last_record_time": None, "file_bytes": None, "current_file": None, "error": None, "error_at": None}
    per_policy = agent_policies.get(state.get("name")) or {}
    for key in ("records_written", "bytes_written", "records_lost_user", "records_recovered", "last_record_time",
                "error"):
        if key in per_policy:
            entry[key] = per_policy[key]
    # What the agent does with this policy: running (reading its ring buffer), waiting (no
    # ring buffer pinned yet), error, disabled; stopped when the agent does not run.
    if not entry["enabled"]:
        entry["state"] = "disabled"
    elif agent is not None and not agent.get("running"):
        entry["state"] = "stopped"
    else:
        entry["state"] = per_policy.get("state") or "unknown"
    error_at = per_policy.get("error_at_unix")
    if entry["error"] and isinstance(error_at, (int, float)):
        entry["error_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(error_at))
    current = per_policy.get("file") or path
    entry["disk"] = None
    if current:
        entry["current_file"] = current
        try:
            entry["file_bytes"] = os.stat(current).st_size
        except OSError:
            entry["file_bytes"] = None
        if entry["enabled"]:
            entry["disk"] = sink_disk(current)
    return entry


def sink_disk(path):
    """Size and free space of the file system a log file is (or will be) on."""
    directory = os.path.dirname(path) or "/"
    while directory != "/" and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return None
    return {"path": directory, "size_bytes": vfs.f_blocks * vfs.f_frsize, "avail_bytes": vfs.f_bavail * vfs.f_frsize}


def _ifindex_names(interfaces):
    """ifindex -> name in this network namespace (if_nametoindex asks the kernel, unlike a
    /sys/class/net that may belong to another namespace)."""
    names = {}
    for iface in interfaces:
        try:
            names[socket.if_nametoindex(iface)] = iface
        except OSError:
            continue
    return names


def gather(runner, only=None, health_window=None):
    status = paths.read_json(paths.AGENT_STATUS) or {}
    agent = agent_status(status)
    agent_policies = status.get("policies") or {}
    # The window the agent judges with (its config), unless the caller asks for another one.
    window = health_window or (status.get("health") or {}).get("window_s")
    limits = health_model.thresholds({"window_s": window})
    now = time.time()
    policy_health = {}
    policies = {}
    for name in paths.applied_policies():
        if only and name != only:
            continue
        state = paths.read_json(paths.state_file(name)) or {}
        attached, drift = attachments(runner, name, state)
        counters = maps.read_counters(name, state.get("rules") or {}, _ifindex_names(state.get("interfaces", [])))
        if counters is not None:
            for detail in state.get("rule_details") or []:
                entry = counters["rules"].get(detail["name"])
                if entry is not None:
                    entry.update((key, detail[key]) for key in ("kind", "action", "direction") if key in detail)
        log = log_status(state, agent_policies, agent)
        if counters is not None:
            log["records_emitted"] = counters["records_emitted"]
            log["records_lost_kernel"] = counters["records_lost"]
        log["records_lost"] = (log.get("records_lost_kernel") or 0) + (log.get("records_lost_user") or 0)
        past = history.summary(name)
        per_agent = agent_policies.get(name) or {}
        health = health_model.policy_health(
            name, now, drift=drift, agent=agent, limits=limits, pending=(past or {}).get("pending"),
            log={"enabled": log["enabled"], "error": log.get("error"), "error_at_unix": per_agent.get("error_at_unix"),
                 # A stopped agent's history is not the present: its problem is reported instead.
                 "samples": per_agent.get("samples") if agent.get("running") else None, "disk": log.get("disk")})
        policy_health[name] = health
        policies[name] = {
            "policy": {
                "name": name,
                "source_digest": state.get("source_digest"),
                "maps_digest": state.get("maps_digest"),
                "applied_at": state.get("applied_at"),
                "interfaces": state.get("interfaces", []),
                "xdp_mode": state.get("xdp_mode"),
                "features_digest": state.get("features_digest"),
                "fallbacks": state.get("fallbacks"),
                # Per interface: driver and the XDP modes it accepted ("ok") or refused at the
                # last attach (xdp_mode auto tries native first).
                "xdp_modes_tried": state.get("xdp_modes_tried") or {},
            },
            "attachments": attached,
            "drift": drift,
            # The health model (docs/facts.md): false when unhealthy; degraded is still healthy.
            "healthy": health["status"] != health_model.UNHEALTHY,
            "health": health,
            "counters": counters,
            "log": log,
            # From the record the blocklist module keeps: a file read, no map walk.
            "live_edits": live_edits.counts(name),
            "history": past,
        }
    # The hash-chained record of changes on this host, verified now (docs/security.md).
    trail = audit.verify()
    return {
        "kernel": kernel_status(),
        "agent": agent,
        "health": health_model.host_health(policy_health, agent, limits, trail),
        "policies": policies,
        "policy_names": sorted(policies),
        "audit": trail,
    }
