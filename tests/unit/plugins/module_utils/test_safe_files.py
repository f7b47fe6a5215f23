# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Confined writes (docs/security.md): the controller's check of log.sink.file and the host's
opens beneath an allowed directory, never through a symlink, a hard link or a FIFO."""

import importlib.util
import json
import os
import stat

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths, _policy, _safe_files

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
AGENT_PATH = os.path.join(REPO, "roles", "host", "files", "bpfleet_agent.py")


@pytest.fixture(scope="module")
def agent():
    spec = importlib.util.spec_from_file_location("bpfleet_agent_safe_files", AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _policy_with_sink(path):
    return {"name": "edge", "interfaces": ["eth0"], "log": {"sink": {"file": path}}}


@pytest.mark.parametrize("path, message", [
    ("/etc/shadow", "edge.yml: log.sink.file: must be a file under /var/log/bpfleet/ "
                    "(the directories the host role allows, bpfleet_host_agent_sink_dirs), got '/etc/shadow'"),
    ("/var/log/../../etc/cron.d/x", "edge.yml: log.sink.file: must not contain '..' components, "
                                    "got '/var/log/../../etc/cron.d/x'"),
    ("/var/log/bpfleet/../../../etc/cron.d/x", "edge.yml: log.sink.file: must not contain '..' components"),
    ("/var/log/bpfleet", "edge.yml: log.sink.file: must be a file under /var/log/bpfleet/"),
    ("/var/log/bpfleet-evil/x", "edge.yml: log.sink.file: must be a file under /var/log/bpfleet/"),
    ("/var/log/bpfleet//x", "edge.yml: log.sink.file: must not contain '.' or empty components"),
    ("/var/log/bpfleet/./x", "edge.yml: log.sink.file: must not contain '.' or empty components"),
    ("/var/log/bpfleet/x\n", "edge.yml: log.sink.file: must not contain control characters"),
    ("var/log/bpfleet/x", "edge.yml: log.sink.file: must be an absolute file path"),
])
def test_controller_refuses_sinks_outside_the_allowed_directories(path, message):
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(_policy_with_sink(path), "edge.yml")
    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("path", ["/var/log/bpfleet/headers.jsonl", "/var/log/bpfleet/edge/web.jsonl",
                                  "/var/log/bpfleet/..x", "/var/log/bpfleet/.hidden"])
def test_controller_accepts_files_beneath_the_default_directory(path):
    model, _warnings = _policy.validate(_policy_with_sink(path), "edge.yml")
    assert model["log"]["file"] == path


def test_controller_uses_the_host_roles_directories():
    policy = _policy_with_sink("/srv/logs/bpfleet/x.jsonl")
    model, _warnings = _policy.validate(policy, "edge.yml", sink_dirs=["/srv/logs/bpfleet/"])
    assert model["log"]["file"] == "/srv/logs/bpfleet/x.jsonl"
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(_policy_with_sink("/var/log/bpfleet/x"), "edge.yml", sink_dirs=["/srv/logs/bpfleet"])
    assert "must be a file under /srv/logs/bpfleet/" in caught.value.problems[0]


def test_filter_takes_sink_dirs():
    from ansible_collections.bpfleet.core.plugins.filter.policy_validate import policy_validate
    result = policy_validate(_policy_with_sink("/etc/shadow"), "edge.yml")
    assert not result["valid"] and "log.sink.file" in result["problems"][0]
    assert policy_validate(_policy_with_sink("/srv/l/x"), "edge.yml", sink_dirs=["/srv/l"])["valid"]


def test_allowed_directories_must_be_clean():
    with pytest.raises(ValueError):
        _safe_files.normalize_dirs(["relative"])
    with pytest.raises(ValueError):
        _safe_files.normalize_dirs(["/var/log/../etc"])
    assert _safe_files.normalize_dirs(["/var/log/bpfleet/"]) == ("/var/log/bpfleet",)


# --- on the host ------------------------------------------------------------------------


def _outside(tmp_path):
    """A file outside the allowed directory that a planted link points at."""
    target = tmp_path / "outside" / "shadow"
    target.parent.mkdir()
    target.write_bytes(b"root:secret\n")
    return target


def test_open_beneath_creates_0640_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        fd, dir_fd = _safe_files.open_beneath(str(tmp_path / "logs" / "sub" / "a.jsonl"), [str(tmp_path / "logs")],
                                              os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    finally:
        os.umask(old)
    os.close(fd)
    os.close(dir_fd)
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / "sub" / "a.jsonl").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / "sub").st_mode) == 0o750


def test_a_symlink_planted_as_the_file_is_refused(tmp_path):
    target = _outside(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "headers.jsonl").symlink_to(target)
    with pytest.raises(_safe_files.UnsafePath, match="symlink"):
        _safe_files.open_beneath(str(logs / "headers.jsonl"), [str(logs)], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert target.read_bytes() == b"root:secret\n"


def test_a_symlinked_directory_below_the_allowed_one_is_refused(tmp_path):
    target = _outside(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "edge").symlink_to(target.parent)
    with pytest.raises(_safe_files.UnsafePath, match="edge: .*symlink"):
        _safe_files.open_beneath(str(logs / "edge" / "shadow"), [str(logs)], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with pytest.raises(_safe_files.UnsafePath):
        _safe_files.open_beneath(str(logs / "edge" / "new.jsonl"), [str(logs)], os.O_WRONLY | os.O_CREAT)
    assert sorted(os.listdir(target.parent)) == ["shadow"]
    assert target.read_bytes() == b"root:secret\n"


def test_a_hard_link_is_refused_and_not_truncated(tmp_path):
    target = _outside(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    os.link(target, logs / "headers.jsonl")
    with pytest.raises(_safe_files.UnsafePath, match="hard links"):
        _safe_files.open_beneath(str(logs / "headers.jsonl"), [str(logs)], os.O_WRONLY | os.O_TRUNC | os.O_CREAT)
    assert target.read_bytes() == b"root:secret\n"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    os.mkfifo(logs / "headers.jsonl")
    with pytest.raises(OSError):
        _safe_files.open_beneath(str(logs / "headers.jsonl"), [str(logs)], os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def test_atomic_write_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    target = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "agent-status.json").symlink_to(target)
    (run / (".agent-status.json.tmp.%d" % os.getpid())).symlink_to(target)
    _safe_files.write_atomic_in(str(run), "agent-status.json", b"{}\n")
    assert target.read_bytes() == b"root:secret\n"
    assert not os.path.islink(run / "agent-status.json")
    assert (run / "agent-status.json").read_bytes() == b"{}\n"
    assert stat.S_IMODE(os.stat(run / "agent-status.json").st_mode) == 0o640


def test_host_state_files_are_written_without_following_links(tmp_path):
    target = _outside(tmp_path)
    state = tmp_path / "state" / "edge"
    state.mkdir(parents=True)
    (state / "state.json").symlink_to(target)
    (state / "state.json.tmp").symlink_to(target)      # the old fixed temporary name
    _host_paths.write_atomic(str(state / "state.json"), '{"schema": 1}\n')
    assert target.read_bytes() == b"root:secret\n"
    assert json.loads((state / "state.json").read_text()) == {"schema": 1}


def test_host_sink_dirs_from_the_agent_config(tmp_path):
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"sink_dirs": ["/srv/logs/"]}))
    assert _safe_files.host_sink_dirs(str(config)) == ("/srv/logs",)
    config.write_text("not json")
    assert _safe_files.host_sink_dirs(str(config)) == ("/var/log/bpfleet",)
    assert _safe_files.host_sink_dirs(str(tmp_path / "missing")) == ("/var/log/bpfleet",)


# --- the agent's files ---------------------------------------------------------------------


def test_agent_sink_refuses_a_planted_symlink_and_writes_nothing_outside(agent, tmp_path):
    target = _outside(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "headers.jsonl").symlink_to(target)
    sink = agent.LogSink(str(logs / "headers.jsonl"), allowed_dirs=[str(logs)])
    with pytest.raises(OSError, match="symlink"):
        sink.write(b'{"a":1}\n')
    assert sink.find((1, 1)) == (None, None)
    sink.close()
    assert target.read_bytes() == b"root:secret\n"


def test_agent_sink_outside_the_allowed_directories_is_refused(agent, tmp_path):
    sink = agent.LogSink(str(tmp_path / "x.jsonl"), allowed_dirs=["/var/log/bpfleet"])
    with pytest.raises(OSError, match="must be a file under /var/log/bpfleet/"):
        sink.write(b"{}\n")
    assert not (tmp_path / "x.jsonl").exists()


def test_agent_rotation_replaces_planted_links_and_truncates_only_its_file(agent, tmp_path):
    target = _outside(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "h.jsonl.1").symlink_to(target)
    sink = agent.LogSink(str(logs / "h.jsonl"), max_size=10, keep=2, allowed_dirs=[str(logs)])
    sink.write(b"0123456789abc\n")          # rotates: h.jsonl.1 (a link) moves to .2, h.jsonl to .1
    assert not os.path.islink(logs / "h.jsonl.1")
    assert (logs / "h.jsonl.1").read_bytes() == b"0123456789abc\n"
    os.unlink(logs / "h.jsonl")
    (logs / "h.jsonl").symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        sink.truncate(str(logs / "h.jsonl"), 0)
    sink.close()
    assert target.read_bytes() == b"root:secret\n"


def test_agent_status_cursor_and_textfile_do_not_follow_links(agent, tmp_path):
    target = _outside(tmp_path)
    run = tmp_path / "run"
    (run / "cursors").mkdir(parents=True)
    (run / "agent-status.json").symlink_to(target)
    agent.write_json_atomically(str(run / "agent-status.json"), {"pid": 1})
    assert target.read_bytes() == b"root:secret\n"
    assert stat.S_IMODE(os.stat(run / "agent-status.json").st_mode) == 0o640
    (run / "cursors" / "web.cursor").symlink_to(target)
    cursor = agent.Cursor(str(run / "cursors" / "web.cursor"))
    assert cursor.load() is None
    with pytest.raises(OSError, match="symlink"):
        cursor.begin(7, 0, 96, (1, 2), 0, 100)
    textfile = tmp_path / "prom"
    textfile.mkdir()
    (textfile / "bpfleet.prom").symlink_to(target)
    agent.write_text_atomically(str(textfile / "bpfleet.prom"), "# nothing\n")
    assert stat.S_IMODE(os.stat(textfile / "bpfleet.prom").st_mode) == 0o644
    assert target.read_bytes() == b"root:secret\n"


def test_agent_cursors_directory_planted_as_a_link_is_refused(agent, tmp_path):
    target = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "cursors").symlink_to(target.parent)
    cursor = agent.Cursor(str(run / "cursors" / "web.cursor"))
    with pytest.raises(OSError, match="symlink"):
        cursor.begin(7, 0, 96, (1, 2), 0, 100)
    assert sorted(os.listdir(target.parent)) == ["shadow"]


def test_agent_config_carries_sink_dirs(agent, tmp_path):
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"sink_dirs": ["/srv/logs"]}))
    options = agent.parse_arguments(["status", "--config", str(config)])
    assert options.sink_dirs == ["/srv/logs"]
