# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters bpfleet.core.fleet_report and bpfleet.core.fleet_report_html (docs in the .yml files).

fleet_report turns the bpfleet facts of many hosts into one document (per host and per
policy: digests, attach modes, packets passed and dropped per rule, records written and
lost, agent state, pending confirmations and rollbacks) plus a summary that names the
hosts that are unhealthy, degraded, unreachable or out of date. Health comes from the health
model (module_utils/_health.py, docs/facts.md): the facts' own `health` when they have it,
else the model applied to the facts here. fleet_report_html renders that
document as one self-contained HTML page (inline CSS, no scripts, no external resources).
"""

from __future__ import annotations

import datetime
import html
import json
import time
from collections import Counter

from ansible.errors import AnsibleFilterError

from ansible_collections.bpfleet.core.plugins.module_utils import _health


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _host_facts(hostvars, host):
    try:
        variables = hostvars[host]
    except KeyError:
        return None
    facts = variables.get("ansible_facts") or {}
    bpfleet = facts.get("bpfleet") if hasattr(facts, "get") else None
    return _plain(bpfleet) if bpfleet else None


def _policy_entry(name, data, health):
    policy = data.get("policy") or {}
    counters = data.get("counters") or {}
    log = data.get("log") or {}
    rules = []
    for rule_name, rule in sorted((counters.get("rules") or {}).items(), key=lambda item: item[1].get("id", 0)):
        rules.append({"name": rule_name, "id": rule.get("id"), "kind": rule.get("kind"), "action": rule.get("action"),
                      "packets": rule.get("packets", 0), "bytes": rule.get("bytes", 0)})
    modes = {}
    for attachment in data.get("attachments") or []:
        if attachment.get("hook") == "xdp":
            modes[attachment.get("iface")] = attachment.get("mode")
    history = data.get("history") or {}
    events = history.get("events") or []
    return {
        "name": name,
        "source_digest": policy.get("source_digest"),
        "maps_digest": policy.get("maps_digest"),
        "applied_at": policy.get("applied_at"),
        "interfaces": policy.get("interfaces") or [],
        "xdp_mode": policy.get("xdp_mode"),
        "attach_modes": modes,
        "status": health["status"],
        "healthy": health["status"] != _health.UNHEALTHY,
        "problems": health["messages"],
        "drift": data.get("drift") or [],
        "packets_seen": counters.get("packets_seen", 0),
        "passed": counters.get("passed", 0),
        "dropped": counters.get("dropped", 0),
        "rate_limited": counters.get("rate_limited", 0),
        "rules": rules,
        "log_enabled": bool(log.get("enabled")),
        "records_written": log.get("records_written", 0),
        "records_lost": log.get("records_lost", 0),
        # Over the health window (kernel + agent), when the facts carry it.
        "records_lost_recent": _recent_loss(health),
        "log_path": log.get("path"),
        "last_good": history.get("good"),
        "pending_confirm": history.get("pending"),
        "last_event": events[-1] if events else None,
    }


def _recent_loss(health):
    loss = health.get("loss") or {}
    if not loss:
        return None
    return (loss.get("kernel") or {}).get("lost", 0) + (loss.get("user") or {}).get("lost", 0)


def _health_of(facts):
    """(host health, {policy: health}): the facts' own, else the model applied here."""
    policies = facts.get("policies") or {}
    if facts.get("health") and all((data or {}).get("health") for data in policies.values()):
        host = facts["health"]
        if _health.audit_problems(facts.get("audit")) and not [
                p for p in host.get("problems") or [] if p.get("code") == "audit_broken"]:
            # Facts from before the audit trail was part of the model.
            host = _health.summary(list(host.get("problems") or []) + _health.audit_problems(facts.get("audit")),
                                   host.get("window_s"))
        return host, dict((name, data["health"]) for name, data in policies.items())
    return _health.from_facts(facts, time.time())


def _kernel_features(kernel):
    """What the host's kernel lacks and what the programs do instead (facts' kernel.*)."""
    features = kernel.get("features") or {}
    return {
        "probed": len(features),
        "available": sorted(name for name, available in features.items() if available),
        "missing": dict(kernel.get("features_missing") or {}),
        "fallbacks": dict(kernel.get("fallbacks") or {}),
        "unsupported": list(kernel.get("unsupported") or []),
        "bcc_version": kernel.get("bcc_version"),
    }


def _audit_entry(facts):
    """The host's audit trail (docs/security.md): chain verified or where it breaks, last changes."""
    audit = facts.get("audit")
    if not isinstance(audit, dict):
        return None
    return {"verified": bool(audit.get("verified")), "records": audit.get("records") or 0,
            "head": audit.get("head"), "error": audit.get("error"), "broken_at": audit.get("broken_at"),
            "last": list(audit.get("last") or [])}


def fleet_report(hostvars, hosts, expected=None):
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("fleet_report: the hosts argument must be a list of inventory host names")
    expected = _plain(expected) if expected else None
    entries = []
    for host in hosts:
        facts = _host_facts(hostvars, host)
        if facts is None:
            entries.append({"host": host, "reachable": False, "policies": [], "agent": None, "kernel": None,
                            "status": _health.UNHEALTHY, "healthy": False, "health_problems": [],
                            "problems": ["no bpfleet facts (host unreachable or not gathered)"]})
            continue
        host_health, policy_health = _health_of(facts)
        policies = [_policy_entry(name, data, policy_health[name])
                    for name, data in sorted((facts.get("policies") or {}).items())]
        agent = facts.get("agent") or {}
        # A broken audit chain is a problem of the health model (audit_broken, unhealthy).
        audit = _audit_entry(facts)
        entries.append({"host": host, "reachable": True, "policies": policies,
                        "agent": {"running": bool(agent.get("running")), "state": _health.agent_state(agent),
                                  "pid": agent.get("pid"), "version": agent.get("version"),
                                  "status_age_s": agent.get("status_age_s")},
                        "kernel": (facts.get("kernel") or {}).get("release"),
                        "kernel_features": _kernel_features(facts.get("kernel") or {}),
                        "audit": audit,
                        "status": host_health["status"],
                        "healthy": host_health["status"] != _health.UNHEALTHY,
                        "health_problems": host_health["problems"],
                        "problems": host_health["messages"]})

    # Out of date: against the expected policy when given, else against the digests most
    # hosts run for each policy name.
    reference = {}
    if expected:
        reference[expected["name"]] = (expected["source_digest"], expected["maps_digest"])
    else:
        by_name = {}
        for entry in entries:
            for policy in entry["policies"]:
                by_name.setdefault(policy["name"], Counter())[(policy["source_digest"], policy["maps_digest"])] += 1
        for name, counts in by_name.items():
            reference[name] = counts.most_common(1)[0][0]
    out_of_date = []
    for entry in entries:
        reasons = []
        if entry["reachable"]:
            names = dict((p["name"], p) for p in entry["policies"])
            for name, (source, maps) in sorted(reference.items()):
                policy = names.get(name)
                if expected and policy is None:
                    reasons.append("%s is not applied" % name)
                elif policy is not None and (policy["source_digest"], policy["maps_digest"]) != (source, maps):
                    reasons.append("%s runs %s/%s, expected %s/%s" % (
                        name, (policy["source_digest"] or "none")[7:19], (policy["maps_digest"] or "none")[7:19],
                        source[7:19], maps[7:19]))
        entry["out_of_date"] = reasons
        if reasons:
            out_of_date.append(entry["host"])

    reachable = [e for e in entries if e["reachable"]]
    policies = [p for e in reachable for p in e["policies"]]
    summary = {
        "hosts": len(entries),
        "reachable": len(reachable),
        "unreachable": len(entries) - len(reachable),
        "unreachable_hosts": [e["host"] for e in entries if not e["reachable"]],
        # healthy: not unhealthy (degraded hosts count, and are also named in degraded_hosts).
        "healthy": len([e for e in reachable if e["healthy"]]),
        "unhealthy_hosts": [e["host"] for e in reachable if not e["healthy"]],
        "degraded_hosts": [e["host"] for e in reachable if e["status"] == _health.DEGRADED],
        "out_of_date": out_of_date,
        "agents_running": len([e for e in reachable if e["agent"]["running"]]),
        "passed": sum(p["passed"] for p in policies),
        "dropped": sum(p["dropped"] for p in policies),
        "records_written": sum(p["records_written"] or 0 for p in policies),
        "records_lost": sum(p["records_lost"] or 0 for p in policies),
        "records_lost_recent": sum(p["records_lost_recent"] or 0 for p in policies),
        "audit_broken": [e["host"] for e in reachable if e.get("audit") and not e["audit"]["verified"]],
        "pending_confirm": sorted(e["host"] for e in reachable if any(p["pending_confirm"] for p in e["policies"])),
        "versions": dict(("%s %s/%s" % (name, (s or "none")[7:19], (m or "none")[7:19]), count)
                         for (name, s, m), count in
                         sorted(Counter((p["name"], p["source_digest"], p["maps_digest"]) for p in policies).items())),
    }
    return {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expected": expected,
        "summary": summary,
        "hosts": entries,
    }


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 4px} .sub{color:#57606a;margin-bottom:16px;font-size:13px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:18px}
.tile{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:110px}
.tile b{display:block;font-size:22px} .tile span{color:#57606a;font-size:12px}
.tile.bad b{color:#cf222e} .tile.good b{color:#1a7f37} .tile.warn b{color:#9a6700}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de;font-size:13px;margin-bottom:18px}
th,td{padding:6px 8px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600}
.ok{background:#dafbe1;color:#1a7f37} .fail{background:#ffebe9;color:#cf222e} .warn{background:#fff8c5;color:#9a6700}
.muted{color:#57606a} ul.problems{margin:0;padding-left:16px;color:#cf222e}
h2{font-size:16px;margin:22px 0 8px}
"""


def _e(value):
    return html.escape("" if value is None else str(value))


def _badge(ok, good="ok", bad="fail", warn=False):
    if ok:
        return '<span class="badge ok">%s</span>' % _e(good)
    return '<span class="badge %s">%s</span>' % ("warn" if warn else "fail", _e(bad))


def _short(digest):
    return (digest or "none").replace("sha256:", "")[:12]


def _num(value):
    return "{:,}".format(value or 0)


def fleet_report_html(report):
    if not isinstance(report, dict) or "hosts" not in report or "summary" not in report:
        raise AnsibleFilterError("fleet_report_html: the input must be the output of bpfleet.core.fleet_report")
    summary = report["summary"]
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bpfleet fleet report</title>',
           '<meta name="viewport" content="width=device-width, initial-scale=1"><style>%s</style></head><body>' % _CSS,
           '<h1>bpfleet fleet report</h1>']
    expected = report.get("expected")
    out.append('<div class="sub">generated %s%s</div>' % (
        _e(report.get("generated_at")),
        " &middot; expected policy <code>%s</code> %s/%s" % (
            _e(expected["name"]), _e(_short(expected["source_digest"])), _e(_short(expected["maps_digest"])))
        if expected else " &middot; out of date = differs from the digests most hosts run"))
    tiles = [
        ("hosts", summary["hosts"], ""),
        ("healthy", summary["healthy"] - len(summary.get("degraded_hosts", [])),
         "good" if summary["healthy"] == summary["hosts"] else "bad"),
        ("degraded", len(summary.get("degraded_hosts", [])), "warn" if summary.get("degraded_hosts") else "good"),
        ("unreachable", summary["unreachable"], "bad" if summary["unreachable"] else "good"),
        ("out of date", len(summary["out_of_date"]), "warn" if summary["out_of_date"] else "good"),
        ("agents running", summary["agents_running"],
         "good" if summary["agents_running"] == summary["reachable"] else "warn"),
        ("packets passed", _num(summary["passed"]), ""),
        ("packets dropped", _num(summary["dropped"]), ""),
        ("records written", _num(summary["records_written"]), ""),
        ("records lost", _num(summary["records_lost"]), "warn" if summary["records_lost"] else "good"),
        ("records lost recently", _num(summary.get("records_lost_recent", 0)),
         "bad" if summary.get("records_lost_recent") else "good"),
        ("audit chains broken", len(summary.get("audit_broken") or []),
         "bad" if summary.get("audit_broken") else "good"),
    ]
    out.append('<div class="tiles">')
    for label, value, kind in tiles:
        out.append('<div class="tile %s" data-tile="%s"><b>%s</b><span>%s</span></div>' % (
            kind, _e(label), _e(value), _e(label)))
    out.append("</div>")

    out.append("<h2>Hosts</h2><table id=\"hosts\"><thead><tr><th>host</th><th>status</th><th>policy</th>"
               "<th>source / maps digest</th><th>XDP mode</th><th class=\"num\">passed</th>"
               "<th class=\"num\">dropped</th>"
               "<th class=\"num\">records written</th><th class=\"num\">records lost</th><th>agent</th>"
               "<th>up to date</th><th>problems</th></tr></thead><tbody>")
    for entry in report["hosts"]:
        if not entry["reachable"]:
            out.append('<tr data-host="%s"><td><b>%s</b></td><td>%s</td><td colspan="9" class="muted">%s</td>'
                       "<td></td></tr>" % (_e(entry["host"]), _e(entry["host"]), _badge(False, bad="unreachable"),
                                           _e("; ".join(entry["problems"]))))
            continue
        rows = entry["policies"] or [None]
        for index, policy in enumerate(rows):
            cells = ['<tr data-host="%s">' % _e(entry["host"])]
            if index == 0:
                span = ' rowspan="%d"' % len(rows) if len(rows) > 1 else ""
                features = entry.get("kernel_features") or {}
                lacks = sorted(features.get("missing") or {})
                cells.append("<td%s><b>%s</b><br><span class=\"muted\">%s</span>"
                             "<br><span class=\"muted features\">BCC %s; %d/%d features; lacks: %s</span></td>" % (
                                 span, _e(entry["host"]), _e(entry["kernel"]), _e(features.get("bcc_version") or "?"),
                                 len(features.get("available") or []), features.get("probed") or 0,
                                 _e(", ".join(lacks) or "nothing")))
                status = entry.get("status") or ("healthy" if entry["healthy"] else "unhealthy")
                cells.append("<td%s>%s</td>" % (span, _badge(status == "healthy", "healthy", status,
                                                             warn=status == "degraded")))
            if policy is None:
                cells.append('<td colspan="7" class="muted">no policy applied</td>')
            else:
                modes = ", ".join("%s: %s" % (iface, mode) for iface, mode in sorted(policy["attach_modes"].items()))
                cells.append("<td><code>%s</code></td>" % _e(policy["name"]))
                cells.append("<td><code>%s</code> / <code>%s</code></td>" % (
                    _e(_short(policy["source_digest"])), _e(_short(policy["maps_digest"]))))
                cells.append("<td>%s</td>" % _e(modes or "not attached"))
                cells.append('<td class="num">%s</td><td class="num">%s</td>' % (
                    _num(policy["passed"]), _num(policy["dropped"])))
                cells.append('<td class="num">%s</td><td class="num">%s</td>' % (
                    _num(policy["records_written"]) if policy["log_enabled"] else "&ndash;",
                    _num(policy["records_lost"]) if policy["log_enabled"] else "&ndash;"))
            if index == 0:
                agent = entry["agent"]
                cells.append("<td%s>%s</td>" % (span, _badge(agent["running"], "running", "stopped")))
                cells.append("<td%s>%s</td>" % (span, _badge(not entry["out_of_date"], "current", "out of date",
                                                             warn=True)))
                problems = entry["problems"] + entry["out_of_date"]
                cells.append("<td%s>%s</td>" % (span, '<ul class="problems">%s</ul>' % "".join(
                    "<li>%s</li>" % _e(p) for p in problems) if problems else ""))
            cells.append("</tr>")
            out.append("".join(cells))
    out.append("</tbody></table>")

    out.append("<h2>Packets per rule</h2><table id=\"rules\"><thead><tr><th>host</th><th>policy</th><th>rule</th>"
               "<th>kind</th><th>action</th><th class=\"num\">packets</th><th class=\"num\">bytes</th>"
               "</tr></thead><tbody>")
    for entry in report["hosts"]:
        for policy in entry["policies"]:
            for rule in policy["rules"]:
                out.append('<tr data-host="%s"><td>%s</td><td><code>%s</code></td><td><code>%s</code></td><td>%s</td>'
                           '<td>%s</td><td class="num">%s</td><td class="num">%s</td></tr>' % (
                               _e(entry["host"]), _e(entry["host"]), _e(policy["name"]), _e(rule["name"]),
                               _e(rule["kind"] or ""), _e(rule["action"] or ""), _num(rule["packets"]),
                               _num(rule["bytes"])))
    out.append("</tbody></table>")

    events = [(entry["host"], policy) for entry in report["hosts"] for policy in entry["policies"]
              if policy["last_event"] or policy["pending_confirm"]]
    if events:
        out.append("<h2>Rollbacks and confirmations</h2><table id=\"events\"><thead><tr><th>host</th><th>policy</th>"
                   "<th>last event</th><th>pending confirmation</th></tr></thead><tbody>")
        for host, policy in events:
            event = policy["last_event"] or {}
            pending = policy["pending_confirm"]
            out.append('<tr data-host="%s"><td>%s</td><td><code>%s</code></td><td>%s</td><td>%s</td></tr>' % (
                _e(host), _e(host), _e(policy["name"]),
                _e("%s at %s (%s)" % (event.get("event"), event.get("at"), event.get("reason", "")) if event else ""),
                _e("until %s" % pending.get("deadline") if pending else "")))
        out.append("</tbody></table>")
    out.extend(_audit_html(report))
    out.append('<div class="sub">versions: %s</div>' % _e(", ".join(
        "%s on %d host%s" % (version, count, "" if count == 1 else "s")
        for version, count in summary["versions"].items())
        or "none"))
    out.append("</body></html>\n")
    return "\n".join(out)


def _audit_html(report):
    """The last changes per host from its audit trail, and whether its hash chain verifies."""
    hosts = [entry for entry in report["hosts"] if entry.get("audit")]
    if not hosts:
        return []
    out = ["<h2>Changes (audit trail)</h2><table id=\"audit\"><thead><tr><th>host</th><th>chain</th><th>seq</th>"
           "<th>time</th><th>action</th><th>policy</th><th>by</th><th>digest before &rarr; after</th>"
           "</tr></thead><tbody>"]
    for entry in hosts:
        audit = entry["audit"]
        chain = _badge(audit["verified"], "verified (%d records)" % audit["records"],
                       "BROKEN: %s" % (audit["error"] or "?"))
        records = list(reversed(audit["last"])) or [None]
        for record in records:
            if record is None:
                out.append('<tr data-host="%s"><td>%s</td><td>%s</td><td colspan="6" class="muted">no changes '
                           "recorded</td></tr>" % (_e(entry["host"]), _e(entry["host"]), chain))
                continue
            actor = record.get("actor") or {}
            who = "%s@%s from %s" % (actor.get("controller_user") or actor.get("remote_user") or "?",
                                     actor.get("controller_host") or "?", actor.get("address") or "local")
            before = (record.get("before") or {}).get("source_digest")
            after = (record.get("after") or {}).get("source_digest")
            out.append('<tr data-host="%s"><td>%s</td><td>%s</td><td class="num">%s</td><td>%s</td><td>%s</td>'
                       "<td><code>%s</code></td><td>%s</td><td><code>%s</code> &rarr; <code>%s</code></td></tr>" % (
                           _e(entry["host"]), _e(entry["host"]), chain, _e(record.get("seq")), _e(record.get("time")),
                           _e(record.get("action") or ("damaged" if record.get("damaged") else "")),
                           _e(record.get("policy")), _e(who), _e(_short(before)), _e(_short(after))))
    out.append("</tbody></table>")
    return out


class FilterModule:
    def filters(self):
        return {"fleet_report": fleet_report, "fleet_report_html": fleet_report_html}
