# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health model (module_utils/_health.py): problems, severities, loss over a window, and
its users (the agent's textfile, the fleet report, the rollout check template)."""

import importlib.util
import json
import os
import types

import pytest
from jinja2 import Environment

from ansible_collections.bpfleet.core.plugins.filter import fleet_report as report_plugin
from ansible_collections.bpfleet.core.plugins.module_utils import _health as health

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
NOW = 1_800_000_000.0
LIMITS = health.thresholds({"window_s": 60, "sample_interval_s": 5})


def samples(points, pid=100, map_id=7, start=NOW - 60, step=5):
    """points: (emitted, lost_kernel, written, lost_user) per sample, `step` s apart."""
    return [{"t": start + index * step, "pid": pid, "map": map_id, "emitted": e, "lost_kernel": lk,
             "written": w, "lost_user": lu} for index, (e, lk, w, lu) in enumerate(points)]


def codes(result):
    return [(p["code"], p["severity"]) for p in result["problems"]]


def test_no_problem_is_healthy():
    result = health.policy_health("web", NOW, drift=[], agent={"state": "running"}, limits=LIMITS,
                                  log={"enabled": True, "samples": samples([(0, 0, 0, 0), (500, 0, 500, 0)]),
                                       "disk": {"path": "/var/log", "size_bytes": 100 << 20,
                                                "avail_bytes": 50 << 20}})
    assert result["status"] == "healthy" and result["problems"] == [] and result["rollout_ok"]
    assert result["loss"]["kernel"] == {"lost": 0, "offered": 500, "known": True}


def test_drift_is_unhealthy_and_fails_the_rollout():
    result = health.policy_health("web", NOW, drift=["eth0: xdp program is not attached"], limits=LIMITS)
    assert codes(result) == [("drift", "unhealthy")]
    assert "eth0: xdp program is not attached" in result["messages"][0]
    assert "bpfleet.core.policy" in result["messages"][0]
    assert result["messages"][0].startswith("web: ")
    assert not result["rollout_ok"]


def test_kernel_loss_over_the_window_degraded_then_unhealthy_and_never_fails_the_rollout():
    few = samples([(0, 0, 0, 0), (10000, 50, 10000, 0)])
    assert health.loss_problems(health.window_loss(few, NOW, 60), LIMITS) == []       # under 100 records
    some = samples([(0, 0, 0, 0), (10000, 300, 10000, 0)])
    problems = health.loss_problems(health.window_loss(some, NOW, 60), LIMITS)
    assert [(p["code"], p["severity"], p["fails_rollout"]) for p in problems] == [
        ("records_lost_kernel", "degraded", False)]
    assert "300 of 10300 records (2.9 %) lost in the kernel in the last 60 s" in problems[0]["message"]
    heavy = samples([(0, 0, 0, 0), (1000, 30000, 1000, 0)])
    problems = health.loss_problems(health.window_loss(heavy, NOW, 60), LIMITS)
    assert [(p["code"], p["severity"], p["fails_rollout"]) for p in problems] == [
        ("records_lost_kernel", "unhealthy", False)]


def test_kernel_loss_by_rate_alone():
    # 0.5 % of a large volume, but 1000 records in 55 s is above 10/s.
    points = samples([(0, 0, 0, 0), (200000, 1000, 200000, 0)], step=55)
    problems = health.loss_problems(health.window_loss(points, NOW, 60), LIMITS)
    assert [p["code"] for p in problems] == ["records_lost_kernel"]


def test_loss_outside_the_window_is_forgotten():
    # Lost 5000 records 10 minutes ago, nothing since: healthy now.
    old = samples([(0, 0, 0, 0), (1000, 5000, 1000, 0)], start=NOW - 600)
    recent = samples([(1000, 5000, 1000, 0), (1100, 5000, 1100, 0), (1200, 5000, 1200, 0)], start=NOW - 50, step=20)
    loss = health.window_loss(old + recent, NOW, 60)
    assert loss["kernel"]["lost"] == 0 and loss["kernel"]["offered"] == 200
    assert health.loss_problems(loss, LIMITS) == []
    # The pair that straddles the window's start still counts: losing now is seen at once.
    now_losing = samples([(0, 0, 0, 0), (100, 900, 100, 0)], start=NOW - 61, step=60)
    assert health.window_loss(now_losing, NOW, 60)["kernel"]["lost"] == 900


def test_user_loss_any_is_degraded_heavy_is_unhealthy_and_fails_the_rollout():
    light = samples([(0, 0, 0, 0), (100000, 0, 99995, 5)])
    problems = health.loss_problems(health.window_loss(light, NOW, 60), LIMITS)
    assert [(p["code"], p["severity"], p["fails_rollout"]) for p in problems] == [
        ("records_lost_user", "degraded", False)]
    # The case: 96,940 of 100,000 records lost on a full disk.
    full = samples([(0, 0, 0, 0), (100000, 0, 3060, 96940)])
    problems = health.loss_problems(health.window_loss(full, NOW, 60), LIMITS)
    assert [(p["code"], p["severity"], p["fails_rollout"]) for p in problems] == [
        ("records_lost_user", "unhealthy", True)]
    assert "96940 of 100000 records (96.9 %) lost by the agent" in problems[0]["message"]


def test_counters_across_worker_restarts_and_map_changes():
    # The worker restarts (its counters from 0), the kernel's continue; then the map is replaced.
    first = samples([(0, 0, 0, 0), (1000, 0, 1000, 10)], pid=1, start=NOW - 50)
    second = samples([(1500, 400, 0, 0), (2000, 400, 500, 0)], pid=2, start=NOW - 40)
    third = samples([(10, 0, 500, 0), (20, 0, 510, 0)], pid=2, map_id=8, start=NOW - 30)
    loss = health.window_loss(first + second + third, NOW, 60)
    assert loss["kernel"] == {"lost": 400, "offered": 2000 + 400 + 10, "known": True}
    assert loss["user"] == {"lost": 10, "handled": 1000 + 10 + 500 + 10, "known": True}


def test_sink_error_is_unhealthy_while_recent_and_clears_after_the_window():
    log = {"enabled": True, "error": "cannot write /var/log/bpfleet/a.jsonl: [Errno 28] No space left on device",
           "error_at_unix": NOW - 5}
    result = health.policy_health("web", NOW, agent={"state": "running"}, log=log, limits=LIMITS)
    assert codes(result) == [("sink_failing", "unhealthy")]
    assert "the agent reports: cannot write /var/log/bpfleet/a.jsonl: [Errno 28]" in result["messages"][0]
    old = dict(log, error_at_unix=NOW - 61)
    assert health.policy_health("web", NOW, agent={"state": "running"}, log=old, limits=LIMITS)["status"] == "healthy"
    ring = dict(log, error="/sys/fs/bpf/bpfleet/web/maps/events: permission denied")
    assert codes(health.policy_health("web", NOW, log=ring, limits=LIMITS)) == [("log_error", "unhealthy")]


def test_agent_stopped_or_stale_only_matters_when_a_policy_logs():
    stopped = {"state": "stopped", "running": False}
    result = health.policy_health("web", NOW, agent=stopped, log={"enabled": True}, limits=LIMITS)
    assert codes(result) == [("agent_stopped", "unhealthy")]
    assert "bpfleet-agent is not running: the records of web are not written" in result["messages"][0]
    assert health.policy_health("web", NOW, agent=stopped, log={"enabled": False})["status"] == "healthy"
    stale = {"state": "stale", "status_age_s": 42.0}
    assert codes(health.policy_health("web", NOW, agent=stale, log={"enabled": True})) == [
        ("status_stale", "unhealthy")]
    # The agent's own error says nothing while it is stopped: the stop is the problem.
    error = {"enabled": True, "error": "cannot write x: full", "error_at_unix": NOW}
    assert codes(health.policy_health("web", NOW, agent=stopped, log=error)) == [("agent_stopped", "unhealthy")]


@pytest.mark.parametrize("size, avail, expected", [
    (100 << 20, 50 << 20, []),
    (100 << 20, 8 << 20, [("disk_near_full", "degraded")]),
    (100 << 20, 1 << 20, [("disk_full", "unhealthy")]),
    (1 << 20, 0, [("disk_full", "unhealthy")]),
    (1 << 20, 600 << 10, []),                 # a small file system is judged by its share
])
def test_disk(size, avail, expected):
    problems = health.disk_problems({"path": "/var/log/bpfleet", "size_bytes": size, "avail_bytes": avail}, LIMITS)
    assert [(p["code"], p["severity"]) for p in problems] == expected


def test_pending_confirmation_is_degraded_and_not_a_rollout_failure():
    result = health.policy_health("web", NOW, pending={"deadline": "2026-12-06T12:00:00Z"})
    assert codes(result) == [("pending_confirm", "degraded")] and result["rollout_ok"]


def test_host_health_lists_agent_problems_once_and_takes_the_worst():
    stopped = {"state": "stopped"}
    policies = {
        "a": health.policy_health("a", NOW, agent=stopped, log={"enabled": True}),
        "b": health.policy_health("b", NOW, agent=stopped, log={"enabled": True}, pending={"deadline": "x"}),
        "c": health.policy_health("c", NOW, agent=stopped, log={"enabled": False}),
    }
    host = health.host_health(policies, stopped)
    assert [p["code"] for p in host["problems"]] == ["agent_stopped", "pending_confirm"]
    assert "the records of a, b are not written" in host["messages"][0]
    assert host["messages"][1].startswith("b: change waiting")
    assert host["status"] == "unhealthy" and not host["rollout_ok"]
    assert health.host_health({}, stopped)["status"] == "healthy"          # nothing logs: no agent needed


def test_from_facts_of_an_older_collection():
    facts = {"agent": {"running": True}, "policies": {"web": {"drift": [], "log": {"enabled": True, "error": None}}}}
    host, policies = health.from_facts(facts, NOW)
    assert host["status"] == "healthy" and policies["web"]["loss"] is None
    facts["agent"] = {"running": False}
    assert health.from_facts(facts, NOW)[0]["problems"][0]["code"] == "agent_stopped"


def test_a_broken_audit_trail_makes_the_host_unhealthy():
    audit = {"path": "/var/lib/bpfleet/audit/audit.jsonl", "verified": False, "error": "line 3: hash mismatch"}
    host = health.host_health({}, None, audit=audit)
    assert host["status"] == "unhealthy" and not host["rollout_ok"]
    assert host["messages"] == ["audit trail broken: line 3: hash mismatch"]
    assert health.host_health({}, None, audit=dict(audit, verified=True, error=None))["status"] == "healthy"
    facts = {"agent": {"running": True}, "policies": {}, "audit": audit}
    assert health.from_facts(facts, NOW)[0]["problems"][0]["code"] == "audit_broken"
    # Facts whose health predates the audit problem: the report adds it through the model.
    hostvars = {"h1": {"ansible_facts": {"bpfleet": dict(facts, health=health.host_health({}, None))}}}
    entry = report_plugin.fleet_report(hostvars, ["h1"])["hosts"][0]
    assert entry["status"] == "unhealthy" and entry["problems"] == ["audit trail broken: line 3: hash mismatch"]


def test_thresholds_override():
    limits = health.thresholds({"window_s": "20", "kernel_loss_min_records": 5.0, "unknown": 1})
    assert limits["window_s"] == 20.0 and limits["kernel_loss_min_records"] == 5 and "unknown" not in limits


# --- its users -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def agent():
    path = os.path.join(REPO, "roles", "host", "files", "bpfleet_agent.py")
    spec = importlib.util.spec_from_file_location("bpfleet_agent_health_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_agent(agent_module, tmp_path, window=30.0, interval=5.0):
    # The agent's own defaults for every option, so options added later need no change here.
    options = types.SimpleNamespace(**dict(
        agent_module.CONFIG_DEFAULTS, state_dir=str(tmp_path / "state"), pin_root=str(tmp_path / "pins"),
        run_dir=str(tmp_path / "run"), agent_log=None, textfile_dir=None, syslog=None, supervised=False,
        health_window=window, health_sample_interval=interval, sink_dirs=None, drop_capabilities=False))
    worker = agent_module.Agent(options)
    policy = agent_module.PolicyLog("web", str(tmp_path / "state" / "web" / "state.json"))
    policy.logging_enabled = True
    policy.sink = agent_module.LogSink(str(tmp_path / "log" / "web.jsonl"))
    (tmp_path / "log").mkdir()
    worker.policies["web"] = policy
    return worker, policy


def test_agent_keeps_a_window_of_samples_and_its_textfile_uses_the_model(agent, tmp_path):
    worker, policy = fake_agent(agent, tmp_path)
    policy.records_emitted_kernel, policy.records_lost_kernel = 0, 0
    for second in range(0, 61):
        now = NOW + second
        policy.records_written = second * 100
        if second == 50:
            policy.records_lost_user = 3000
            worker.set_error(policy, "cannot write %s: [Errno 28] No space left on device" % policy.sink.path)
        policy.error_at = now if second == 50 else policy.error_at
        worker.update_health(policy, now)
    history = [point for point in policy.samples if not point.get("current")]
    assert policy.samples[-1]["current"] and policy.samples[-1]["written"] == 6000
    # A point every 5 s, kept for the window (30 s) plus two intervals.
    assert [point["t"] - NOW for point in history] == [20, 25, 30, 35, 40, 45, 50, 55, 60]
    result = worker.health["web"]
    assert [(p["code"], p["severity"]) for p in result["problems"]] == [
        ("records_lost_user", "unhealthy"), ("sink_failing", "unhealthy")]
    worker.host_health = agent._health.host_health(worker.health, {"state": "running"}, worker.health_limits)
    text = agent.prometheus_text(worker, int((NOW + 60) * 1e9))
    assert 'bpfleet_health{policy="web"} 2\n' in text
    assert 'bpfleet_host_health 2\n' in text
    assert 'bpfleet_health_problem{policy="web",code="sink_failing",severity="unhealthy"} 1\n' in text
    assert 'bpfleet_window_records_lost{policy="web",where="agent"} 3000\n' in text
    assert 'bpfleet_health_window_seconds 30\n' in text
    assert 'bpfleet_log_filesystem_avail_bytes{policy="web",path="%s"} ' % (tmp_path / "log") in text
    # Once the window has passed without new failures, the policy is healthy again.
    for second in range(61, 100):
        policy.records_written = second * 100
        worker.update_health(policy, NOW + second)
    assert worker.health["web"]["status"] == "healthy", worker.health["web"]["messages"]


def test_agent_carries_the_history_over_a_restart(agent, tmp_path):
    worker, policy = fake_agent(agent, tmp_path)
    os.makedirs(worker.run_dir)
    previous = {"policies": {"web": {"samples": [
        {"t": NOW - 10, "pid": 1, "map": 7, "emitted": 100, "lost_kernel": 0, "written": 100, "lost_user": 0},
        {"t": NOW - 2, "pid": 1, "map": 7, "emitted": 150, "lost_kernel": 0, "written": 150, "lost_user": 0,
         "current": True}]}}}
    with open(os.path.join(worker.run_dir, agent.STATUS_FILE), "w") as status:
        json.dump(previous, status)
    worker.load_previous_samples()
    policy.records_emitted_kernel, policy.records_lost_kernel = 400, 5000     # lost while no worker ran
    policy.stats_map_id = 7
    worker.update_health(policy, NOW)
    assert [p["code"] for p in worker.health["web"]["problems"]] == ["records_lost_kernel"]
    assert not any(point.get("current") for point in policy.samples[:-1])


def report_facts(policy_health, host_health):
    return {"ansible_facts": {"bpfleet": {
        "kernel": {"release": "6.18"}, "agent": {"state": "running", "running": True},
        "health": host_health,
        "policies": {"web": {"policy": {"name": "web", "source_digest": "sha256:" + "a" * 64,
                                        "maps_digest": "sha256:" + "b" * 64},
                             "drift": [], "healthy": True, "health": policy_health,
                             "counters": {}, "log": {"enabled": True}, "history": {}}}}}}


def test_fleet_report_uses_the_model_of_the_facts():
    lossy = health.policy_health("web", NOW, agent={"state": "running"}, limits=LIMITS,
                                 log={"enabled": True, "samples": samples([(0, 0, 0, 0), (1000, 30000, 1000, 0)])})
    host = health.host_health({"web": lossy}, {"state": "running"}, LIMITS)
    fine = health.policy_health("web", NOW, agent={"state": "running"}, log={"enabled": True})
    hostvars = {"h1": report_facts(lossy, host),
                "h2": report_facts(fine, health.host_health({"web": fine}, {"state": "running"}))}
    report = report_plugin.fleet_report(hostvars, ["h1", "h2"])
    h1 = report["hosts"][0]
    assert h1["status"] == "unhealthy" and not h1["healthy"]
    assert any("lost in the kernel in the last 60 s" in p for p in h1["problems"])
    assert h1["policies"][0]["records_lost_recent"] == 30000
    assert report["summary"]["unhealthy_hosts"] == ["h1"] and report["summary"]["healthy"] == 1
    page = report_plugin.fleet_report_html(report)
    assert '<span class="badge fail">unhealthy</span>' in page and "lost in the kernel" in page


def test_rollout_health_check_template_follows_the_model():
    with open(os.path.join(REPO, "roles", "rollout", "templates", "health_checks.j2")) as template_file:
        environment = Environment()
        # The two Ansible filters the template uses.
        environment.filters["to_json"] = json.dumps
        environment.filters["bool"] = lambda value: value is True or str(value).lower() in ("true", "yes", "1", "on")
        template = environment.from_string(template_file.read())

    def checks(after_health, mode="model"):
        policy = {"policy": {"source_digest": "s", "maps_digest": "m", "xdp_mode": "auto"}, "drift": [],
                  "attachments": [{"hook": "xdp", "mode": "native"}], "log": {"enabled": False}}
        out = template.render(rollout_name="web", before={"policies": {"web": policy}},
                              after={"policies": {"web": policy}, "health": after_health, "agent": {}},
                              rollout_apply={"policy": {"source_digest": "s", "maps_digest": "m"}},
                              rollout_health_xdp_mode="", rollout_health_counters=False,
                              rollout_health_records="false", rollout_health_problems=mode, rollout_health_interval=2,
                              rollout_probes={})
        return dict((check["name"], check) for check in json.loads(out))

    kernel = health.loss_problems(health.window_loss(samples([(0, 0, 0, 0), (1000, 30000, 1000, 0)]), NOW, 60),
                                  LIMITS)
    lossy = health.summary(kernel + [health.problem("pending_confirm", "waiting", policy="web")])
    result = checks(lossy)
    assert result["health"]["ok"], result["health"]
    assert "not failing" in result["health"]["detail"]
    assert not checks(lossy, "unhealthy")["health"]["ok"]
    assert "health" not in checks(lossy, "none")
    sink = health.summary([health.problem("sink_failing", "the agent reports: cannot write", policy="web")])
    assert not checks(sink)["health"]["ok"]
    assert "cannot write" in checks(sink)["health"]["detail"]
