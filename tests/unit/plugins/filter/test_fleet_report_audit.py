"""fleet_report and fleet_report_html with the hosts' audit trails (docs/security.md)."""

from ansible_collections.bpfleet.core.plugins.filter import fleet_report as plugin

RECORD = {"seq": 3, "time": "2026-12-06T12:00:00.000000Z", "action": "policy_apply", "policy": "web",
          "actor": {"controller_user": "alice", "controller_host": "ci-1", "address": "10.0.0.5",
                    "remote_user": "root"},
          "before": {"source_digest": "sha256:" + "a" * 64}, "after": {"source_digest": "sha256:" + "b" * 64}}


def facts(audit):
    return {"ansible_facts": {"bpfleet": {"kernel": {"release": "6.18"}, "agent": {"running": True},
                                          "policies": {}, "audit": audit}}}


def test_a_broken_chain_is_a_problem_and_flagged():
    good = {"verified": True, "records": 3, "head": "sha256:x", "error": None, "last": [RECORD]}
    broken = dict(good, verified=False, error="line 2: hash mismatch (record 2 was edited)", broken_at=2)
    report = plugin.fleet_report({"h1": facts(good), "h2": facts(broken), "h3": facts(None)}, ["h1", "h2", "h3"])
    assert report["summary"]["audit_broken"] == ["h2"]
    by_host = dict((entry["host"], entry) for entry in report["hosts"])
    assert by_host["h1"]["healthy"] and by_host["h1"]["audit"]["last"][0]["action"] == "policy_apply"
    assert not by_host["h2"]["healthy"]
    assert "audit trail broken: line 2: hash mismatch (record 2 was edited)" in by_host["h2"]["problems"]
    assert by_host["h3"]["audit"] is None and by_host["h3"]["healthy"]
    page = plugin.fleet_report_html(report)
    assert 'id="audit"' in page and "alice@ci-1 from 10.0.0.5" in page
    assert "BROKEN: line 2: hash mismatch (record 2 was edited)" in page
    assert 'data-tile="audit chains broken"><b>1</b>' in page
