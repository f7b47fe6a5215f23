"""Security guarantees on real lab hosts (docs/security.md).

Confined writes:
- `log.sink.file: /etc/shadow` and `/var/log/../../etc/cron.d/x` are refused on the controller
  with a path-bearing error; nothing on the host changes;
- a log directory the controller allows but the host's role does not (agent.json sink_dirs)
  is refused again by the module on the host;
- a symlink planted in /var/log/bpfleet where a policy's log file goes: the agent refuses
  it, counts the records it could not write, says why in its status and the facts, and
  the link's target outside the allowed directory is not written;
- a state.json forged on the host with a log file outside the allowed directories: the agent
  refuses it too (the third check, independent of the controller and the module).

Audit trail: a policy apply and a list edit each append one hash-chained record with the
controller's user and host and the SSH client's address; one record edited on h1 makes the
facts say where the chain breaks and playbooks/report.yml flag h1; deleting it is caught too.

Secrets: a POST with secrets in headers, a query parameter and the body, logged normally and
then through the agent's error path; none of them in any file, status, fact or message.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".tmp" / "collections"
VENV_BIN = Path(sys.executable).parent

LAB_HOSTS = 2
AGENT = "/usr/lib/bpfleet/agent/bpfleet-agent"
PORT = 47001            # Lab.udp_delivered sends to this port
TARGET = "/var/log/outside-target.txt"          # per lab host: /var/log is the host's own
PLANTED = "/var/log/bpfleet/planted.jsonl"


def policy(name: str, sink: str) -> dict:
    return {"name": name, "interfaces": ["eth0"],
            "log": {"fields": ["action", "src_ip", "dst_port"], "directions": ["ingress"],
                    "match": [{"proto": "udp", "port": PORT}], "sink": {"file": sink}}}


@pytest.fixture(scope="module")
def fleet(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}],
                 extra=["-e", json.dumps({"bpfleet_host_agent_status_interval": 0.5})])
    return lab


def sha256_on(lab, host: str, path: str) -> str:
    return lab.exec(host, "sh", "-c", f"sha256sum {path} 2>/dev/null || echo missing").stdout.split()[0]


def agent_policy_status(lab, host: str, name: str) -> dict:
    result = lab.exec(host, AGENT, "status", check=False)
    status = (json.loads(result.stdout).get("status") or {}).get("policies") or {}
    return status.get(name) or {}


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value})")


@pytest.mark.parametrize("sink, message", [
    ("/etc/shadow", "log.sink.file: must be a file under /var/log/bpfleet/ (the directories the host role allows, "
                    "bpfleet_host_agent_sink_dirs), got '/etc/shadow'"),
    ("/var/log/../../etc/cron.d/x", "log.sink.file: must not contain '..' components, "
                                    "got '/var/log/../../etc/cron.d/x'"),
])
def test_controller_refuses_sinks_outside_the_log_directory(fleet, sink, message):
    lab = fleet
    shadow_before = sha256_on(lab, "h1", "/etc/shadow")
    outcome = lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": policy("sec-bad", sink)}}],
                           hosts="h1", expect_failure=True)
    result = outcome["h1"][0]
    assert result["failed"] and message in result["msg"], result["msg"]
    assert "<inline policy>: " + message in result["problems"]
    assert "invocation" not in result or result.get("changed") is not True
    assert sha256_on(lab, "h1", "/etc/shadow") == shadow_before
    assert lab.exec("h1", "test", "-e", "/var/lib/bpfleet/sec-bad", check=False).returncode != 0
    assert lab.exec("h1", "test", "-e", "/etc/cron.d/x", check=False).returncode != 0


def test_host_refuses_a_directory_its_role_did_not_allow(fleet):
    lab = fleet
    wider = {"bpfleet_host_agent_sink_dirs": ["/var/log/bpfleet", "/var/log/elsewhere"]}
    outcome = lab.playbook([{"name": "policy", "bpfleet.core.policy": {
        "policy": policy("sec-wider", "/var/log/elsewhere/x.jsonl")}}], hosts="h1", expect_failure=True,
        extra=["-e", json.dumps(wider)])
    msg = outcome["h1"][0]["msg"]
    assert "log.sink.file: must be a file under /var/log/bpfleet/" in msg and "this host allows" in msg, msg
    assert "nothing was changed" in msg
    assert lab.exec("h1", "test", "-e", "/var/lib/bpfleet/sec-wider", check=False).returncode != 0


def test_agent_refuses_a_symlink_planted_in_the_log_directory(fleet):
    lab = fleet
    lab.exec("h1", "sh", "-c", f"echo 'not for the agent' > {TARGET} && ln -sf {TARGET} {PLANTED}")
    target_before = sha256_on(lab, "h1", TARGET)
    lab.exec("h1", "touch", "/var/log/.bpfleet-security-marker")
    outcome = lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": policy("sec-planted", PLANTED)}}],
                           hosts="h1")
    assert outcome["h1"][0]["changed"]
    wait_for(lambda: agent_policy_status(lab, "h1", "sec-planted").get("map_id"), what="the agent to open the ring")
    delivered = lab.udp_delivered("h2", lab.hosts["h2"]["lab_ipv4"], "h1", lab.hosts["h1"]["lab_ipv4"], count=10)
    assert delivered == 10
    def lost_ten():
        status = agent_policy_status(lab, "h1", "sec-planted")
        return status if status.get("records_lost_user", 0) >= 10 else None

    status = wait_for(lost_ten, what="records counted lost")
    assert status["state"] == "error" and "symlink" in status["error"], status
    assert status["records_written"] == 0
    assert sha256_on(lab, "h1", TARGET) == target_before
    assert lab.exec("h1", "test", "-L", PLANTED).returncode == 0
    written_outside = lab.exec("h1", "sh", "-c", "find /var/log -newer /var/log/.bpfleet-security-marker -type f "
                                                  "-not -path '/var/log/bpfleet/*' -print").stdout.split()
    assert written_outside == [], written_outside
    facts = lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {"name": "sec-planted"}}], hosts="h1")
    log = facts["h1"][0]["ansible_facts"]["bpfleet"]["policies"]["sec-planted"]["log"]
    assert log["state"] == "error" and "symlink" in log["error"] and log["records_lost_user"] >= 10, log
    lab.playbook([{"name": "remove", "bpfleet.core.policy": {"name": "sec-planted", "state": "absent"}}], hosts="h1")


def test_agent_refuses_a_forged_state_file(fleet):
    lab = fleet
    forged = {"schema": 1, "name": "sec-forged", "rules": {},
              "log": {"enabled": True, "fields": ["len"], "file": "/root/forged.jsonl"}}
    lab.exec("h1", "sh", "-c", "mkdir -p /var/lib/bpfleet/sec-forged && cat > /var/lib/bpfleet/sec-forged/state.json "
                               "<<'EOF'\n%s\nEOF" % json.dumps(forged))
    try:
        status = wait_for(lambda: agent_policy_status(lab, "h1", "sec-forged").get("error"), what="a refusal")
        assert "log.sink.file /root/forged.jsonl refused: must be a file under /var/log/bpfleet/" in status, status
        assert lab.exec("h1", "test", "-e", "/root/forged.jsonl", check=False).returncode != 0
    finally:
        lab.exec("h1", "rm", "-rf", "/var/lib/bpfleet/sec-forged")


AUDIT = "/var/lib/bpfleet/audit.jsonl"


def audit_facts(lab, host: str = "h1") -> dict:
    outcome = lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {}}], hosts=host)
    return outcome[host][0]["ansible_facts"]["bpfleet"]["audit"]


def run_report(lab, report_dir) -> dict:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_HOST_KEY_CHECKING="false",
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", ANSIBLE_RETRY_FILES_ENABLED="false")
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(lab.inventory),
                             str(REPO / "playbooks" / "report.yml"), "-e", f"report_dir={report_dir}",
                             "-e", "report_hosts=bpfleet_lab"], capture_output=True, text=True, timeout=600, env=env,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return json.loads((report_dir / "fleet-report.json").read_text())


def test_audit_trail_records_every_change_and_flags_an_edited_record(fleet, tmp_path):
    lab = fleet
    first = audit_facts(lab)
    assert first["verified"], first
    start = first["records"]
    name = "sec-audit"
    sink = "/var/log/bpfleet/sec-audit.jsonl"
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": policy(name, sink)}},
                  {"name": "deny", "bpfleet.core.blocklist": {"policy": name, "entries": ["192.0.2.0/24"]}},
                  {"name": "again, unchanged", "bpfleet.core.policy": {"policy": policy(name, sink)}}],
                 hosts="h1")
    audit = audit_facts(lab)
    assert audit["verified"] and audit["records"] == start + 2, audit     # the unchanged run adds nothing
    applied, edited = audit["last"][-2:]
    assert (applied["action"], applied["policy"]) == ("policy_apply", name)
    assert applied["before"]["source_digest"] is None and applied["after"]["source_digest"].startswith("sha256:")
    assert edited["action"] == "list_edit"
    assert edited["before"]["live_edits_digest"] != edited["after"]["live_edits_digest"]
    actor = applied["actor"]
    assert actor["controller_user"] == getpass.getuser() and actor["controller_host"] == socket.gethostname()
    assert actor["address"] and actor["remote_user"] == "root", actor
    head = audit["head"]

    # One record edited on the host (who made the change), its hash left alone.
    line = start + 1
    lab.exec("h1", "/usr/bin/python3", "-c", (
        "import json,sys; p=sys.argv[1]; n=int(sys.argv[2]); lines=open(p).read().splitlines(True); "
        "r=json.loads(lines[n-1]); r['actor']['controller_user']='nobody'; "
        "lines[n-1]=json.dumps(r,sort_keys=True,separators=(',',':'))+'\\n'; open(p,'w').write(''.join(lines))"),
        AUDIT, str(line))
    broken = audit_facts(lab)
    assert not broken["verified"] and broken["broken_at"] == line, broken
    assert broken["error"] == "line %d: hash mismatch (record %d was edited)" % (line, line)
    assert broken["head"] == head

    report = run_report(lab, tmp_path / "report")
    assert report["summary"]["audit_broken"] == ["h1"], report["summary"]
    h1 = next(entry for entry in report["hosts"] if entry["host"] == "h1")
    assert not h1["healthy"] and f"audit trail broken: {broken['error']}" in h1["problems"]
    assert next(entry for entry in report["hosts"] if entry["host"] == "h2")["audit"]["verified"]
    page = (tmp_path / "report" / "fleet-report.html").read_text()
    assert "BROKEN: line %d: hash mismatch" % line in page and 'data-tile="audit chains broken"><b>1</b>' in page

    # Deleting the edited record instead: still detected (by the next record's seq and prev).
    lab.exec("h1", "sed", "-i", f"{line}d", AUDIT)
    deleted = audit_facts(lab)
    assert not deleted["verified"] and deleted["broken_at"] == line and "expected %d" % line in deleted["error"]
    lab.playbook([{"name": "remove", "bpfleet.core.policy": {"name": name, "state": "absent"}}], hosts="h1")
    assert audit_facts(lab)["last"][-1]["action"] == "policy_remove"


HTTP_PORT = 8081
HTTP_SINK = "/var/log/bpfleet/sec-http.jsonl"


def new_secret(kind: str) -> str:
    return "Zq%s-%s" % (kind, secrets.token_urlsafe(18))


def test_no_secret_reaches_logs_state_status_facts_audit_or_errors(fleet):
    """A POST with secrets in headers, a query parameter and the body, written normally and then
    with the log file swapped for a planted symlink (so the agent's error path runs with those
    records): no secret in any file under /var/log, /var/lib/bpfleet (audit trail included)
    or /run/bpfleet on either host, in the facts, or in the link's target."""
    lab = fleet
    name = "sec-http"
    http_policy = {"name": name, "interfaces": ["eth0"],
                   "log": {"fields": ["src_ip", "dst_port"], "directions": ["ingress"],
                           "match": [{"proto": "tcp", "port": HTTP_PORT}],
                           "http": {"ports": [HTTP_PORT], "headers": ["host", "x-request-id"], "max_bytes": 512},
                           "sink": {"file": HTTP_SINK}}}
    lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": http_policy}}], hosts="h1")
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fleet" / "bpfleet_lab.py"), "exec", "--name", lab.name, "--host", "h1",
         "--", "timeout", "120", "/usr/bin/python3", "-m", "http.server", str(HTTP_PORT), "--bind", "0.0.0.0",
         "--directory", "/tmp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hidden = []
    try:
        lab.exec("h1", "sh", "-c", f"for i in $(seq 50); do ss -Hltn sport = :{HTTP_PORT} | grep -q . && exit 0; "
                                   "sleep 0.1; done; exit 1")
        wait_for(lambda: agent_policy_status(lab, "h1", name).get("map_id"), what="the agent to read the ring")

        def post(request_id):
            bearer, cookie, query, body = (new_secret(kind) for kind in ("bearer", "cookie", "query", "body"))
            hidden.extend([bearer, cookie, query, body])
            lab.exec("h2", "curl", "-sS", "-o", "/dev/null", "--max-time", "5",
                     "-H", f"Authorization: Bearer {bearer}", "-H", f"Cookie: sid={cookie}",
                     "-H", f"X-Request-Id: {request_id}", "--data", f"password={body}&token={body}",
                     f"http://{lab.hosts['h1']['lab_ipv4']}:{HTTP_PORT}/login?api_key={query}", check=False)

        first_id = new_secret("rid")
        post(first_id)
        wait_for(lambda: first_id in lab.exec("h1", "cat", HTTP_SINK, check=False).stdout, what="the first record")
        line = next(json.loads(text) for text in lab.exec("h1", "cat", HTTP_SINK).stdout.splitlines()
                    if first_id in text)
        assert line["http"]["path"] == "/login?api_key=[REDACTED]"
        assert line["http"]["headers"]["authorization"] == "[REDACTED]"

        # The error path: the log file replaced by a link to a file outside the log directory.
        lab.exec("h1", "sh", "-c", f"echo target > {TARGET} && mv {HTTP_SINK} {HTTP_SINK}.1 && "
                                   f"ln -s {TARGET} {HTTP_SINK}")
        post(new_secret("rid"))
        wait_for(lambda: "symlink" in (agent_policy_status(lab, "h1", name).get("error") or ""),
                 what="the agent to refuse the link")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert lab.exec("h1", "cat", TARGET).stdout == "target\n"
    for host in lab.hosts:
        for needle in hidden:
            found = lab.exec(host, "grep", "-rlF", "--", needle, "/var/log", "/var/lib/bpfleet", "/run/bpfleet",
                             check=False)
            assert found.returncode == 1, f"{needle[:10]}... found on {host} in {found.stdout}{found.stderr}"
    facts = json.dumps(lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {}}]))
    assert "symlink" in facts
    for needle in hidden:
        assert needle not in facts
    lab.playbook([{"name": "remove", "bpfleet.core.policy": {"name": name, "state": "absent"}}], hosts="h1")


def test_agent_keeps_only_cap_bpf_in_daemon_mode(fleet):
    """The lab hosts have no systemd: the supervised daemon and its worker drop every
    capability but CAP_BPF (docs/security.md), and still read the ring buffers (the tests above
    got their records through this agent)."""
    lab = fleet
    report = json.loads(lab.exec("h1", AGENT, "status").stdout)
    assert report["mode"] == "daemon" and report["pid"] and report["supervisor_pid"], report
    cap_bpf = 1 << 39
    for pid in (report["pid"], report["supervisor_pid"]):
        status = lab.exec("h1", "cat", f"/proc/{pid}/status").stdout
        sets = dict((line.split(":")[0], int(line.split(":")[1], 16)) for line in status.splitlines()
                    if line.startswith("Cap"))
        shown = {key: hex(value) for key, value in sets.items()}
        assert sets["CapEff"] == sets["CapPrm"] == sets["CapBnd"] == cap_bpf, (pid, shown)
        assert sets["CapAmb"] == sets["CapInh"] == 0
        assert "NoNewPrivs:\t1" in status
    assert report["status"]["capabilities"] == {"effective": ["CAP_BPF"], "bounding": ["CAP_BPF"]}
