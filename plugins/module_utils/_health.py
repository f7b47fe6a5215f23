# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health model of bpfleet (docs/facts.md, "Health"): one place that decides whether a
policy and a host are healthy, degraded or unhealthy, with a problem string an operator can
act on for each reason.

Used by the facts (_status.gather), the fleet report filter, the agent's Prometheus
textfile (the agent imports a copy of this file) and, through the facts, the rollout health
checks. Pure Python, standard library only, no I/O: every input is passed in (Python 3.9+,
it also runs inside the agent on the hosts).

Loss is judged over a recent window, not since start: the agent keeps a short history of
its counters (``samples``: one point every ``sample_interval_s``, plus the current one), and
the model sums the increases between consecutive points inside the window. A host that lost
records an hour ago is fine now; a host losing records now is flagged.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
SEVERITY_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}

# Defaults of the thresholds; see docs/facts.md for the reasons.
DEFAULTS = {
    # Loss and sink errors count when they happened within this many seconds.
    "window_s": 300.0,
    # One point of counter history every this many seconds (the agent), kept for window_s
    # plus two intervals.
    "sample_interval_s": 10.0,
    # Records the kernel could not put into the ring buffer: degraded when at least
    # kernel_loss_min_records were lost in the window and either kernel_loss_share of the
    # records offered or kernel_loss_rate per second; unhealthy from kernel_loss_unhealthy_share.
    "kernel_loss_min_records": 100,
    "kernel_loss_share": 0.01,
    "kernel_loss_rate": 10.0,
    "kernel_loss_unhealthy_share": 0.5,
    # Records the agent could not write: any is degraded, from user_loss_unhealthy_share of
    # what the agent handled (and at least user_loss_unhealthy_min records) unhealthy.
    "user_loss_unhealthy_share": 0.01,
    "user_loss_unhealthy_min": 10,
    # The file system of the sink: degraded from disk_used_degraded of its size used,
    # unhealthy from disk_used_unhealthy or less than disk_free_min_bytes left.
    "disk_used_degraded": 0.90,
    "disk_used_unhealthy": 0.98,
    "disk_free_min_bytes": 1 << 20,
    # The agent rewrites its status about once a second; older than this means it is stuck.
    "status_stale_s": 15.0,
}

# Problem codes, their usual severity and whether the rollout health checks fail on them
# (docs/facts.md has the table). Severity of the loss and disk codes depends on the amount.
CODES = {
    "drift": (UNHEALTHY, True),
    "agent_stopped": (UNHEALTHY, True),
    "status_stale": (UNHEALTHY, True),
    "sink_failing": (UNHEALTHY, True),
    "log_error": (UNHEALTHY, True),
    "records_lost_user": (None, True),          # fails the rollout when unhealthy
    "records_lost_kernel": (None, False),       # depends on the traffic of the moment
    "disk_full": (UNHEALTHY, True),
    "disk_near_full": (DEGRADED, False),
    "pending_confirm": (DEGRADED, False),       # the rollout itself runs with a pending change
    "audit_broken": (UNHEALTHY, True),          # a security event: explain it before changing more
}

# Agent errors about the output file, as bpfleet_agent.py words them.
SINK_ERROR_PREFIXES = ("cannot write", "cannot reopen", "cannot open")


def thresholds(overrides=None):
    result = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key in result and value is not None:
            result[key] = float(value) if isinstance(result[key], float) else int(value)
    return result


def problem(code, message, policy=None, severity=None):
    default_severity, fails_rollout = CODES[code]
    severity = severity or default_severity
    if code == "records_lost_user":
        fails_rollout = severity == UNHEALTHY
    return {"code": code, "severity": severity, "policy": policy, "message": message,
            "fails_rollout": bool(fails_rollout)}


def status_of(problems):
    worst = HEALTHY
    for item in problems:
        if SEVERITY_RANK[item["severity"]] > SEVERITY_RANK[worst]:
            worst = item["severity"]
    return worst


def summary(problems, window_s=None, extra=None):
    problems = sorted(problems, key=lambda p: (-SEVERITY_RANK[p["severity"]], p["policy"] or "", p["code"],
                                               p["message"]))
    result = {
        "status": status_of(problems),
        "problems": problems,
        # What an operator reads first: one line per problem.
        "messages": [("%s: %s" % (p["policy"], p["message"])) if p["policy"] else p["message"] for p in problems],
        "rollout_ok": not [p for p in problems if p["fails_rollout"]],
    }
    if window_s is not None:
        result["window_s"] = window_s
    if extra:
        result.update(extra)
    return result


# --- loss over the window -------------------------------------------------------------

def _counter(sample, key):
    value = sample.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _increase(first, second, key, same_source):
    a, b = _counter(first, key), _counter(second, key)
    if a is None or b is None or not same_source or b < a:
        # Another worker, another map, or the counter was reset: the increase is unknown.
        return None
    return b - a


def window_loss(samples, now, window_s):
    """Records lost and handled in the last ``window_s`` seconds from the agent's samples.

    A sample: {"t": unix seconds, "pid": worker pid, "map": ring buffer map id, "emitted",
    "lost_kernel": the kernel's counters (None when unknown), "written", "lost_user": the
    worker's counters}. Increases between consecutive samples are summed when the second one
    lies in the window; kernel counters only between samples of the same map, the worker's
    only between samples of the same worker (they restart from 0 with it).
    """
    start = now - window_s
    points = sorted((s for s in samples or [] if isinstance(s, dict) and _counter(s, "t") is not None),
                    key=lambda s: s["t"])
    kernel_lost = kernel_emitted = user_lost = user_written = 0
    kernel_known = user_known = False
    covered_from = None
    for first, second in zip(points, points[1:]):
        if second["t"] <= start or second["t"] > now + 5:
            continue
        if covered_from is None:
            covered_from = first["t"]
        same_map = first.get("map") == second.get("map")
        lost = _increase(first, second, "lost_kernel", same_map)
        emitted = _increase(first, second, "emitted", same_map)
        if lost is not None and emitted is not None:
            kernel_lost += lost
            kernel_emitted += emitted
            kernel_known = True
        same_worker = first.get("pid") == second.get("pid")
        lost = _increase(first, second, "lost_user", same_worker)
        written = _increase(first, second, "written", same_worker)
        if lost is not None and written is not None:
            user_lost += lost
            user_written += written
            user_known = True
    span = round(points[-1]["t"] - covered_from, 1) if covered_from is not None else 0.0
    return {
        "window_s": window_s,
        "span_s": span,                 # how much of the window the samples cover
        "kernel": {"lost": kernel_lost, "offered": kernel_emitted + kernel_lost, "known": kernel_known},
        "user": {"lost": user_lost, "handled": user_written + user_lost, "known": user_known},
    }


def _share(lost, total):
    return float(lost) / total if total else 0.0


def _pct(share):
    return "%.1f %%" % (100.0 * share) if share < 0.999 or share == 1.0 else "%.2f %%" % (100.0 * share)


def loss_problems(loss, limits):
    problems = []
    window = int(round(loss["window_s"]))
    kernel = loss["kernel"]
    if kernel["known"] and kernel["lost"] >= limits["kernel_loss_min_records"]:
        share = _share(kernel["lost"], kernel["offered"])
        rate = kernel["lost"] / max(loss["span_s"], 1.0)
        if share >= limits["kernel_loss_share"] or rate >= limits["kernel_loss_rate"]:
            severity = UNHEALTHY if share >= limits["kernel_loss_unhealthy_share"] else DEGRADED
            problems.append(problem(
                "records_lost_kernel",
                "%d of %d records (%s) lost in the kernel in the last %d s: the ring buffer was full (the agent "
                "is too slow or stopped, or too much traffic is logged: narrow log.match or set log.sample)"
                % (kernel["lost"], kernel["offered"], _pct(share), window), severity=severity))
    user = loss["user"]
    if user["known"] and user["lost"] > 0:
        share = _share(user["lost"], user["handled"])
        severity = UNHEALTHY if (share >= limits["user_loss_unhealthy_share"]
                                 and user["lost"] >= limits["user_loss_unhealthy_min"]) else DEGRADED
        problems.append(problem(
            "records_lost_user",
            "%d of %d records (%s) lost by the agent in the last %d s: it could not write them to the sink "
            "(see log.error and the disk of the log file)" % (user["lost"], user["handled"], _pct(share), window),
            severity=severity))
    return problems


def disk_problems(disk, limits):
    """``disk``: {"path", "size_bytes", "avail_bytes"} of the file system holding the sink."""
    if not disk or not disk.get("size_bytes"):
        return []
    size, avail = disk["size_bytes"], max(disk.get("avail_bytes") or 0, 0)
    used = 1.0 - float(avail) / size
    text = "%s is %s full (%s free of %s)" % (disk.get("path"), _pct(used), _size(avail), _size(size))
    if used >= limits["disk_used_unhealthy"] or avail < min(limits["disk_free_min_bytes"], size * 0.5):
        return [problem("disk_full", text + ": records cannot be written; free space, or rotate "
                                            "(log.sink.max_size and keep, logrotate)")]
    if used >= limits["disk_used_degraded"]:
        return [problem("disk_near_full", text + ": free space, or rotate (log.sink.max_size and keep, logrotate)")]
    return []


def _size(value):
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return "%.1f %s" % (float(value) / factor, unit)
    return "%d B" % value


# --- a policy, a host ----------------------------------------------------------------

def policy_health(name, now, drift=None, log=None, agent=None, pending=None, limits=None):
    """Health of one policy.

    drift: the facts' drift strings (None: not known, as in the agent). log: {"enabled",
    "error", "error_at_unix", "samples", "disk"}. agent: {"state": running|stale|stopped,
    "pid", "status_age_s"} (None: the agent itself asks). pending: history.pending.
    """
    limits = limits or thresholds()
    log = log or {}
    problems = []
    for text in drift or []:
        problems.append(problem("drift", "%s (run bpfleet.core.policy again: it re-attaches the pinned program)"
                                % text, policy=name))
    if pending:
        problems.append(problem("pending_confirm", "change waiting for confirmation until %s "
                                "(bpfleet.core.policy_confirm, or the host rolls it back)"
                                % pending.get("deadline"), policy=name))
    loss = None
    if log.get("enabled"):
        if agent is not None and agent_state(agent) != "running":
            # Reported once per host (host_health); here so a policy's own health says it too.
            problems.extend(dict(p, policy=name) for p in agent_problems(agent, [name], limits))
        error = log.get("error")
        error_at = log.get("error_at_unix")
        recent = not isinstance(error_at, (int, float)) or error_at >= now - limits["window_s"]
        if error and recent and (agent is None or agent_state(agent) == "running"):
            code = "sink_failing" if str(error).startswith(SINK_ERROR_PREFIXES) else "log_error"
            problems.append(problem(code, "the agent reports: %s" % error, policy=name))
        if log.get("samples") is not None:
            loss = window_loss(log.get("samples"), now, limits["window_s"])
            problems.extend(dict(p, policy=name) for p in loss_problems(loss, limits))
        problems.extend(dict(p, policy=name) for p in disk_problems(log.get("disk"), limits))
    result = summary(problems, limits["window_s"])
    result["logs"] = bool(log.get("enabled"))
    result["loss"] = loss
    return result


def agent_state(agent):
    """running, stale or stopped (facts from before `state` existed have only `running`)."""
    return agent.get("state") or ("running" if agent.get("running") else "stopped")


def agent_problems(agent, logging_policies, limits=None):
    """The agent's own problems; none when no policy logs (the agent is not needed then)."""
    limits = limits or thresholds()
    if not logging_policies or agent is None:
        return []
    state = agent_state(agent)
    names = ", ".join(sorted(logging_policies))
    if state == "stale":
        return [problem("status_stale", "bpfleet-agent has not updated its status for %s s: it is stuck; see "
                        "/var/log/bpfleet/agent.log and restart it (bpfleet-agent restart, or systemctl restart "
                        "bpfleet-agent)" % agent.get("status_age_s"))]
    if state != "running":
        return [problem("agent_stopped", "bpfleet-agent is not running: the records of %s are not written "
                        "and the kernel drops them once the ring buffer is full; start it (role bpfleet.core.host, "
                        "bpfleet-agent start, or systemctl start bpfleet-agent) and see /var/log/bpfleet/agent.log"
                        % names)]
    return []


def audit_problems(audit):
    """``audit``: the facts' audit (_audit.verify(): verified, error, path); none when absent."""
    if not isinstance(audit, dict) or audit.get("verified", True):
        return []
    # Worded as the fleet report said it before the model knew the audit trail (docs/security.md
    # says what to do: records of changes were deleted, moved or edited on the host).
    return [problem("audit_broken", "audit trail broken: %s" % (audit.get("error") or "?"))]


def host_health(policies, agent=None, limits=None, audit=None):
    """Health of a host from its policies' health (policy_health), the agent's state and the
    audit trail's verification.

    Agent problems are listed once for the host (policies that log repeat them in their own
    health); the other problems carry their policy's name."""
    limits = limits or thresholds()
    logging = [name for name, health in policies.items() if health.get("logs")]
    problems = list(agent_problems(agent, logging, limits)) + audit_problems(audit)
    agent_codes = ("agent_stopped", "status_stale")
    for name in sorted(policies):
        problems.extend(p for p in policies[name]["problems"] if p["code"] not in agent_codes)
    return summary(problems, limits["window_s"])


def from_facts(facts, now, limits=None):
    """(host health, {policy: health}) from the facts of a host (ansible_facts.bpfleet).

    Facts from an older collection have no samples: loss is then not judged."""
    limits = limits or thresholds()
    agent = facts.get("agent") or {}
    result = {}
    for name, data in sorted((facts.get("policies") or {}).items()):
        log = dict(data.get("log") or {})
        result[name] = policy_health(name, now, drift=data.get("drift") or [], log=log, agent=agent,
                                     pending=(data.get("history") or {}).get("pending"), limits=limits)
    return host_health(result, agent, limits, facts.get("audit")), result


def severity_value(status):
    """0 healthy, 1 degraded, 2 unhealthy (the textfile's bpfleet_health)."""
    return SEVERITY_RANK.get(status, 2)
