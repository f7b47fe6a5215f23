"""HTTP request headers on real hosts: Python's http.server on h1, curl on h2, secrets in the
requests, and the records both hosts write (h1 at tc ingress, h2 at tc egress).

Asserted: the http part of the records (method, path, version, kept headers, "[REDACTED]"
for every sensitive header and query parameter), truncation of a request split across two
segments and of one larger than max_bytes, IPv6, log.match keeping everything but port 8080
out of the log, and that no secret is anywhere: not in the log directory, not in the state
and status files, not in the facts, and not in the raw ring-buffer records read straight
from the pinned map while the agent is stopped.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "tests" / "fleet" / "bpfleet_lab.py"
LAB_HOSTS = 2
PORT = 8080
LOG_FILE = "/var/log/bpfleet/http.jsonl"
AGENT = "/usr/lib/bpfleet/agent/bpfleet-agent"

POLICY = {
    "name": "ht-web",
    "interfaces": ["eth0"],
    "log": {
        "fields": ["action", "rule", "ip_ver", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "tcp_flags"],
        "directions": ["ingress", "egress"],
        "match": [{"proto": "tcp", "port": PORT}],
        "http": {"ports": [PORT], "headers": ["host", "user-agent", "x-request-id"], "redact": ["x-session"],
                 "max_bytes": 512},
        "sink": {"file": LOG_FILE},
    },
}

# Reads the policy's pinned ring buffer as a second consumer, with the agent's own modules.
RAW_READER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, "/usr/lib/bpfleet/agent")
    import _bpf_syscall, _ringbuf
    fd = _bpf_syscall.obj_get("/sys/fs/bpf/bpfleet/%s/maps/events")
    ring = _ringbuf.RingBuffer(fd)
    found = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found += [record.hex() for record in ring.drain()]
        if any(sys.argv[1].encode().hex() in record for record in found):
            break
        time.sleep(0.2)
    print(json.dumps(found))
""" % POLICY["name"])

# Sends one request in two TCP segments, the sensitive header in the second.
SPLIT_CLIENT = textwrap.dedent("""
    import socket, sys, time
    dst, port, first, second = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = socket.create_connection((dst, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(first.encode().decode("unicode_escape").encode("latin-1"))
    time.sleep(0.5)
    s.sendall(second.encode().decode("unicode_escape").encode("latin-1"))
    print(s.recv(100).split(b"\\r\\n")[0].decode())
""")


def new_secret(kind: str) -> str:
    return "%s-%s" % (kind, secrets.token_urlsafe(24))


@pytest.fixture(scope="module")
def web(lab):
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}])
    outcome = lab.playbook([{"name": "policy", "bpfleet.core.policy": {"policy": POLICY}}])
    assert all(results[0]["changed"] for results in outcome.values())
    server = subprocess.Popen(
        [sys.executable, str(LAB), "exec", "--name", lab.name, "--host", "h1", "--",
         "timeout", "300", "/usr/bin/python3", "-m", "http.server", str(PORT), "--bind", "::",
         "--directory", "/var/lib/bpfleet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.exec("h1", "sh", "-c", f"for i in $(seq 50); do ss -Hltn sport = :{PORT} | grep -q . && exit 0; "
                               "sleep 0.1; done; exit 1")
    yield lab
    server.terminate()
    server.wait(timeout=30)


def curl(lab, url: str, *headers: str) -> str:
    argv = ["curl", "-sS", "-g", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    for header in headers:
        argv += ["-H", header]
    return lab.exec("h2", *argv, url).stdout


def records_with(lab, host: str, needle: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
    """The records of a host's log that contain `needle`, once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        text = lab.exec(host, "sh", "-c", f"cat {LOG_FILE} 2>/dev/null || true").stdout
        found = [json.loads(line) for line in text.splitlines() if needle in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def assert_nowhere(lab, *needles: str) -> None:
    """No needle in any file of the hosts' logs, state and status directories, or in the facts."""
    for host in lab.hosts:
        for needle in needles:
            found = lab.exec(host, "grep", "-rlF", "--", needle, "/var/log", "/var/lib/bpfleet", "/run/bpfleet",
                             check=False)
            assert found.returncode == 1, f"{needle[:10]}... found on {host} in {found.stdout}{found.stderr}"
    facts = json.dumps(lab.playbook([{"name": "facts", "bpfleet.core.bpfleet_facts": {}}]))
    for needle in needles:
        assert needle not in facts


def test_requests_are_logged_with_their_secrets_redacted(web):
    lab = web
    request_id = new_secret("rid")
    hidden = [new_secret(kind) for kind in ("bearer", "cookie", "apikey", "session", "query", "token")]
    bearer, cookie, apikey, session, query, token = hidden
    status = curl(lab, f"http://{lab.hosts['h1']['lab_ipv4']}:{PORT}/state.json?api_key={query}&lang=en",
                  f"Authorization: Bearer {bearer}", f"Cookie: sid={cookie}", f"X-Api-Key: {apikey}",
                  f"X-Session: {session}", f"X-Auth-Token: {token}", f"X-Request-Id: {request_id}",
                  "Accept: text/plain")
    assert status in ("200", "404"), status
    for host, direction in (("h1", "ingress"), ("h2", "egress")):
        found = [r for r in records_with(lab, host, request_id) if r["dir"] == direction]
        assert len(found) == 1, (host, found)
        record = found[0]
        assert (record["src_ip"], record["dst_ip"], record["dst_port"], record["proto"], record["ip_ver"]) == (
            lab.hosts["h2"]["lab_ipv4"], lab.hosts["h1"]["lab_ipv4"], PORT, "tcp", 4)
        assert record["http"]["method"] == "GET"
        assert record["http"]["version"] == "HTTP/1.1"
        assert record["http"]["path"] == "/state.json?api_key=[REDACTED]&lang=en"
        assert record["http"]["truncated"] is False
        headers = record["http"]["headers"]
        assert headers["host"] == f"{lab.hosts['h1']['lab_ipv4']}:{PORT}"
        assert headers["user-agent"].startswith("curl/")
        assert headers["x-request-id"] == request_id
        for name in ("authorization", "cookie", "x-api-key", "x-session", "x-auth-token"):
            assert headers[name] == "[REDACTED]", name
        assert "accept" not in headers                # not kept
    assert_nowhere(lab, *hidden)


def test_ipv6_requests_are_logged_too(web):
    lab = web
    request_id = new_secret("rid6")
    bearer = new_secret("bearer6")
    curl(lab, f"http://[{lab.hosts['h1']['lab_ipv6']}]:{PORT}/", f"Authorization: Bearer {bearer}",
         f"X-Request-Id: {request_id}")
    found = [r for r in records_with(lab, "h1", request_id) if r["dir"] == "ingress"]
    assert len(found) == 1
    assert (found[0]["ip_ver"], found[0]["src_ip"]) == (6, lab.hosts["h2"]["lab_ipv6"])
    assert found[0]["http"]["headers"]["authorization"] == "[REDACTED]"
    assert_nowhere(lab, bearer)


def test_split_and_oversized_requests_are_logged_as_truncated(web):
    lab = web
    split_id, big_id = new_secret("split"), new_secret("big")
    split_secret, big_secret = new_secret("bearer-split"), new_secret("bearer-big")
    first = f"GET /split HTTP/1.1\\r\\nHost: h1\\r\\nX-Request-Id: {split_id}\\r\\n"
    second = f"Authorization: Bearer {split_secret}\\r\\n\\r\\n"
    answer = lab.exec("h2", "/usr/bin/python3", "-c", SPLIT_CLIENT, lab.hosts["h1"]["lab_ipv4"], str(PORT),
                      first, second).stdout
    assert answer.startswith("HTTP/1.0 "), answer
    curl(lab, f"http://{lab.hosts['h1']['lab_ipv4']}:{PORT}/big", f"X-Request-Id: {big_id}", "X-Pad: " + "p" * 600,
         f"Authorization: Bearer {big_secret}")
    for request_id, path in ((split_id, "/split"), (big_id, "/big")):
        found = [r for r in records_with(lab, "h1", request_id) if r["dir"] == "ingress"]
        assert len(found) == 1, found
        http = found[0]["http"]
        assert (http["path"], http["truncated"], http["headers"]["x-request-id"]) == (path, True, request_id)
        assert "authorization" not in http["headers"]         # never captured: after the cut
    assert_nowhere(lab, split_secret, big_secret)


def test_log_match_keeps_other_traffic_out(web):
    lab = web
    text = lab.exec("h1", "cat", LOG_FILE).stdout
    records = [json.loads(line) for line in text.splitlines()]
    assert records, "nothing logged"
    # Ansible's SSH sessions to h1 (port 22) ran all along: none of them was logged.
    assert all(PORT in (record["src_port"], record["dst_port"]) for record in records)


def test_raw_ring_buffer_records_hold_no_secret(web):
    """The kernel blanked the values before submitting the record: read the pinned ring buffer
    directly, with the agent stopped, and look for the secret bytes."""
    lab = web
    lab.playbook([{"ansible.builtin.command": f"{AGENT} stop"}], hosts="h1")
    try:
        request_id, user_agent = new_secret("rawid"), "probe-" + secrets.token_hex(8)
        bearer, query = new_secret("rawbearer"), new_secret("rawquery")
        curl(lab, f"http://{lab.hosts['h1']['lab_ipv4']}:{PORT}/raw?access_token={query}",
             f"Authorization: Bearer {bearer}", f"X-Request-Id: {request_id}", f"User-Agent: {user_agent}")
        raw = json.loads(lab.exec("h1", "/usr/bin/python3", "-c", RAW_READER, request_id).stdout)
        with_request = [bytes.fromhex(record) for record in raw if request_id.encode().hex() in record]
        assert with_request, "the request's record is not in the ring buffer"
        for record in with_request:
            assert b"X-Request-Id: " + request_id.encode() in record   # other values are there
            assert b"User-Agent: " + user_agent.encode() in record
            assert b"Authorization:" in record
            assert bearer.encode() not in record and query.encode() not in record
            assert bearer[:12].encode() not in record and query[:12].encode() not in record
        # The same holds for every record in the buffer, whatever request it came from.
        assert not any(bearer.encode().hex() in record or query.encode().hex() in record for record in raw)
    finally:
        lab.playbook([{"ansible.builtin.include_role": {"name": "bpfleet.core.host", "tasks_from": "agent"}}],
                     hosts="h1")
