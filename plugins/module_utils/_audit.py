# -*- coding: utf-8 -*-
# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit trail: one hash-chained record per change on a host (docs/security.md).

Every change the collection makes on a host (policy apply or removal, list edit, rollback,
confirm, the commit-confirmed timer's rollback) appends one JSON line to
/var/lib/bpfleet/audit.jsonl:

    {"seq": 7, "time": "...Z", "host": "h1", "action": "policy_apply", "policy": "edge-web",
     "actor": {"controller_user": "alice", "controller_host": "ci-1", "address": "10.0.0.5",
               "remote_user": "root"},
     "before": {"source_digest": ..., "maps_digest": ..., "live_edits_digest": ...},
     "after": {...}, "details": {...},
     "prev": "sha256:<hash of record 6>", "hash": "sha256:<sha256 of this record without 'hash'>"}

The hash covers the canonical JSON of the record (sorted keys, no spaces) without its `hash`
key, and `prev` is the previous record's `hash`: editing any record breaks its own hash,
deleting or reordering one breaks the next record's `prev` or `seq`. Deleting records from
the end is caught by the head file (audit.head: the last seq and hash, rewritten after
every append). Someone with root on the host can rewrite the whole chain and the head; the
copy of every record sent to syslog (facility auth, tag bpfleet-audit; journald reads it,
and a forwarder ships it off the host) is what such a rewrite cannot reach. verify() says
where a chain breaks; bpfleet_facts reports it and playbooks/report.yml flags it.

Standard library only, Python 3.9+.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import fcntl
import hashlib
import json
import os
import pwd
import socket

try:
    import syslog
except ImportError:         # not on every platform; the file is the record of truth
    syslog = None

from ansible_collections.bpfleet.core.plugins.module_utils import _safe_files

AUDIT_DIR = "/var/lib/bpfleet"
AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head"
GENESIS = "sha256:" + "0" * 64
SYSLOG_TAG = "bpfleet-audit"
# A record is one line; the facts show this many of the latest.
LAST_RECORDS = 5
ACTIONS = ("policy_apply", "policy_remove", "list_edit", "rollback", "confirm", "timer_rollback")


def canonical(record):
    """The bytes the hash covers: the record without `hash`, sorted keys, no spaces, ASCII."""
    body = dict((key, value) for key, value in record.items() if key != "hash")
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_hash(record):
    return "sha256:" + hashlib.sha256(canonical(record)).hexdigest()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _file_digest(path):
    try:
        with open(path, "rb") as handle:
            return "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def digests(name, state_root=AUDIT_DIR):
    """What a policy looks like on this host now: the applied digests and the live edits."""
    state = None
    try:
        with open(os.path.join(state_root, name, "state.json"), "rb") as handle:
            state = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        state = None
    state = state if isinstance(state, dict) else {}
    return {"source_digest": state.get("source_digest"), "maps_digest": state.get("maps_digest"),
            "live_edits_digest": _file_digest(os.path.join(state_root, name, "live_edits.json"))}


def actor(controller=None):
    """Who made the change: the controller's user and host (sent by the action plugin), the
    address the SSH connection came from, and the user the module runs as on the host."""
    controller = controller if isinstance(controller, dict) else {}
    ssh = (os.environ.get("SSH_CLIENT") or os.environ.get("SSH_CONNECTION") or "").split()
    try:
        remote_user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        remote_user = str(os.getuid())
    result = {"controller_user": controller.get("user"), "controller_host": controller.get("host"),
              "address": ssh[0] if ssh else None, "remote_user": remote_user}
    if os.environ.get("SUDO_USER"):
        result["sudo_user"] = os.environ["SUDO_USER"]
    return result


def _last_record(fd):
    """(seq, hash) of the last whole line of the open audit file, (0, GENESIS) when empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS
    chunk = min(size, 1 << 16)
    data = os.pread(fd, chunk, size - chunk)
    lines = data.rstrip(b"\n").split(b"\n")
    try:
        last = json.loads(lines[-1].decode("utf-8"))
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        # A damaged last line: chain onto the hash of its bytes, so appending goes on and
        # verify() still reports the damage where it is.
        return -1, "sha256:" + hashlib.sha256(lines[-1]).hexdigest()


def append(action, policy, before=None, after=None, controller=None, details=None, directory=AUDIT_DIR):
    """Append one record (under an exclusive lock), update the head, copy it to syslog.
    Returns the record."""
    fd = _safe_files.open_in(directory, AUDIT_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seq, prev = _last_record(fd)
        if seq < 0:
            seq = count_lines(fd)
        record = {
            "seq": seq + 1,
            "time": _now(),
            "host": socket.gethostname(),
            "action": action,
            "policy": policy,
            "actor": actor(controller),
            "before": before,
            "after": after,
            "details": details or {},
            "prev": prev,
        }
        record["hash"] = record_hash(record)
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
        os.write(fd, line)
        os.fsync(fd)
        head = json.dumps({"seq": record["seq"], "hash": record["hash"], "time": record["time"]},
                          sort_keys=True).encode("ascii") + b"\n"
        _safe_files.write_atomic_in(directory, HEAD_FILE, head, 0o640, sync=True)
    finally:
        os.close(fd)
    to_syslog(line)
    return record


def count_lines(fd):
    count = 0
    offset = 0
    while True:
        data = os.pread(fd, 1 << 16, offset)
        if not data:
            return count
        count += data.count(b"\n")
        offset += len(data)


def to_syslog(line):
    """Best effort: a host without /dev/log still has the file (and the facts say so)."""
    if syslog is None:
        return
    try:
        syslog.openlog(SYSLOG_TAG, 0, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_NOTICE, line.decode("ascii").rstrip("\n"))
        syslog.closelog()
    except (OSError, ValueError):
        pass


def _summary(record):
    return dict((key, record.get(key)) for key in ("seq", "time", "action", "policy", "actor", "before", "after"))


def verify(directory=AUDIT_DIR, last=LAST_RECORDS):
    """Check the whole chain and the head file. Returns
    {"path", "records", "head", "verified", "error", "broken_at", "last": [latest records]}."""
    path = os.path.join(directory, AUDIT_FILE)
    result = {"path": path, "records": 0, "head": None, "verified": True, "error": None, "broken_at": None,
              "last": []}
    try:
        fd = _safe_files.open_in(directory, AUDIT_FILE, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        result.update(verified=False, error="cannot read %s: %s" % (path, exc))
        return result
    recent = []
    prev, seq = GENESIS, 0
    if fd is not None:
        with os.fdopen(fd, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                problem = None
                try:
                    record = json.loads(raw.decode("utf-8"))
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except (ValueError, UnicodeDecodeError):
                    record, problem = None, "line %d is not a JSON record" % number
                if record is not None:
                    if record.get("seq") != number:
                        problem = "line %d: seq %r, expected %d (a record was deleted or moved)" % (
                            number, record.get("seq"), number)
                    elif record.get("prev") != prev:
                        problem = "line %d: prev does not match the hash of record %d (a record was deleted, " \
                                  "moved or edited)" % (number, number - 1)
                    elif record.get("hash") != record_hash(record):
                        problem = "line %d: hash mismatch (record %d was edited)" % (number, number)
                if problem and result["verified"]:
                    result.update(verified=False, error=problem, broken_at=number)
                seq = number
                prev = record.get("hash") if isinstance(record, dict) else \
                    "sha256:" + hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
                recent.append(_summary(record) if isinstance(record, dict) else {"seq": number, "damaged": True})
                del recent[:-last]
    result["records"] = seq
    result["head"] = prev if seq else None
    result["last"] = recent
    head = None
    try:
        fd = _safe_files.open_in(directory, HEAD_FILE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as handle:
            head = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        head = None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        head = {"error": str(exc)}
    if result["verified"]:
        if head is None and seq:
            result.update(verified=False, error="%s is missing while %s has %d records" % (HEAD_FILE, AUDIT_FILE, seq))
        elif head is not None and not isinstance(head, dict):
            result.update(verified=False, error="%s is damaged" % HEAD_FILE)
        elif head is not None and (head.get("seq") != seq or head.get("hash") != result["head"]):
            head_seq = head.get("seq")
            result.update(verified=False, broken_at=seq + 1 if isinstance(head_seq, int) and head_seq > seq else None,
                          error="%s ends at record %d but %s says record %s (%s): records were removed or the log "
                                "was replaced" % (AUDIT_FILE, seq, HEAD_FILE, head_seq, head.get("hash")))
    return result


def record_change(action, policy, before, controller=None, details=None, directory=AUDIT_DIR):
    """append() with `after` read now; never fails the change it records (returns an error
    message or None): the change has happened, and a module must report it."""
    try:
        append(action, policy, before, digests(policy, directory), controller, details, directory)
    except (OSError, ValueError) as exc:
        return "audit record not written: %s" % exc
    return None
