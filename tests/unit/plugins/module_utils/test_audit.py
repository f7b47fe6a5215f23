# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hash-chained audit trail (plugins/module_utils/_audit.py, docs/security.md): every
kind of tampering with the file is reported with where the chain breaks."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _audit


@pytest.fixture
def trail(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(_audit, "to_syslog", sent.append)
    monkeypatch.setenv("SSH_CLIENT", "10.1.2.3 50000 22")
    directory = str(tmp_path)
    (tmp_path / "edge").mkdir()
    state = {"source_digest": "sha256:s1", "maps_digest": "sha256:m1"}
    (tmp_path / "edge" / "state.json").write_text(json.dumps(state))
    before = _audit.digests("edge", directory)
    for action in ("policy_apply", "list_edit", "rollback", "confirm"):
        _audit.append(action, "edge", before, _audit.digests("edge", directory),
                      {"user": "alice", "host": "ci-1"}, {"n": 1}, directory)
    return tmp_path, sent


def lines(tmp_path):
    return (tmp_path / "audit.jsonl").read_text().splitlines()


def write_lines(tmp_path, new_lines):
    (tmp_path / "audit.jsonl").write_text("".join(line + "\n" for line in new_lines))


def test_records_chain_and_verify(trail):
    tmp_path, sent = trail
    result = _audit.verify(str(tmp_path))
    assert result["verified"] and result["error"] is None and result["records"] == 4
    records = [json.loads(line) for line in lines(tmp_path)]
    assert records[0]["prev"] == _audit.GENESIS
    assert all(records[i]["prev"] == records[i - 1]["hash"] for i in range(1, 4))
    assert result["head"] == records[-1]["hash"]
    assert [r["action"] for r in result["last"]] == ["policy_apply", "list_edit", "rollback", "confirm"]
    actor = records[0]["actor"]
    assert actor["controller_user"] == "alice" and actor["controller_host"] == "ci-1" and actor["address"] == "10.1.2.3"
    assert records[0]["before"] == {"source_digest": "sha256:s1", "maps_digest": "sha256:m1", "live_edits_digest": None}
    assert len(sent) == 4 and json.loads(sent[0].decode())["hash"] == records[0]["hash"]
    assert oct(os.stat(tmp_path / "audit.jsonl").st_mode & 0o777) == "0o640"


def test_an_edited_record_is_detected_where_it_is(trail):
    tmp_path, _sent = trail
    edited = lines(tmp_path)
    record = json.loads(edited[1])
    record["actor"]["controller_user"] = "mallory"
    edited[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    write_lines(tmp_path, edited)
    result = _audit.verify(str(tmp_path))
    assert not result["verified"] and result["broken_at"] == 2
    assert result["error"] == "line 2: hash mismatch (record 2 was edited)"


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(trail):
    tmp_path, _sent = trail
    edited = lines(tmp_path)
    record = json.loads(edited[1])
    record["details"] = {"n": 2}
    record["hash"] = _audit.record_hash(record)
    edited[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    write_lines(tmp_path, edited)
    result = _audit.verify(str(tmp_path))
    assert not result["verified"] and result["broken_at"] == 3 and "prev does not match" in result["error"]


def test_a_deleted_record_is_detected(trail):
    tmp_path, _sent = trail
    write_lines(tmp_path, lines(tmp_path)[:1] + lines(tmp_path)[2:])
    result = _audit.verify(str(tmp_path))
    assert not result["verified"] and result["broken_at"] == 2 and "seq 3, expected 2" in result["error"]


def test_records_removed_from_the_end_are_detected_by_the_head(trail):
    tmp_path, _sent = trail
    write_lines(tmp_path, lines(tmp_path)[:3])
    result = _audit.verify(str(tmp_path))
    assert not result["verified"] and result["broken_at"] == 4
    assert "audit.jsonl ends at record 3 but audit.head says record 4" in result["error"]


def test_a_missing_head_or_a_damaged_line_is_detected(trail):
    tmp_path, _sent = trail
    os.unlink(tmp_path / "audit.head")
    assert _audit.verify(str(tmp_path))["error"] == "audit.head is missing while audit.jsonl has 4 records"
    damaged = lines(tmp_path)
    damaged[0] = damaged[0][:-5]
    write_lines(tmp_path, damaged)
    result = _audit.verify(str(tmp_path))
    assert result["broken_at"] == 1 and "not a JSON record" in result["error"]


def test_appending_goes_on_after_damage_and_the_damage_stays_reported(trail):
    tmp_path, _sent = trail
    damaged = lines(tmp_path)
    damaged[-1] = "garbage"
    write_lines(tmp_path, damaged)
    record = _audit.append("policy_remove", "edge", None, None, None, None, str(tmp_path))
    assert record["seq"] == 5
    result = _audit.verify(str(tmp_path))
    assert result["records"] == 5 and result["broken_at"] == 4 and not result["verified"]


def test_no_trail_verifies_empty(tmp_path):
    result = _audit.verify(str(tmp_path))
    assert result["verified"] and result["records"] == 0 and result["head"] is None


def test_record_change_never_raises(tmp_path):
    (tmp_path / "audit.jsonl").symlink_to(tmp_path / "elsewhere")
    problem = _audit.record_change("policy_apply", "edge", None, None, None, str(tmp_path))
    assert problem.startswith("audit record not written: ") and "symlink" in problem
    assert not (tmp_path / "elsewhere").exists()


SYSLOG_PROBE = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfleet.core.plugins.module_utils import _audit
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
server.bind("/dev/log")
server.settimeout(5)
_audit.to_syslog(b'{"seq":1,"action":"policy_apply"}\n')
sys.stdout.write(server.recv(4096).decode())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_records_are_copied_to_syslog_on_dev_log(tmp_path):
    """A real datagram on /dev/log (a private /dev in a mount namespace, so no other process sees it)."""
    collections = os.path.join(os.path.dirname(_audit.__file__), "..", "..", "..", "..", "..")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             'mount -t tmpfs none /dev && exec "$0" -c "$1" "$2"', sys.executable, SYSLOG_PROBE,
                             os.path.abspath(collections)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<")                     # <priority>
    priority = int(result.stdout[1:result.stdout.index(">")])
    assert priority == 4 * 8 + 5                            # auth.notice
    assert 'bpfleet-audit' in result.stdout and result.stdout.endswith('{"seq":1,"action":"policy_apply"}')
