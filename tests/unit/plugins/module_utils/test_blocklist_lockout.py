# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lockout guard of bpfleet.core.blocklist decides as the XDP program does (_classifier),
port rules included: removing the allow entry that lets the controller in under a port rule that
drops SSH is refused, and the same removal under a port rule that passes SSH is not.

The host side runs for real on files in a temporary state root (state.json and applied.json as
the policy module writes them); only the live maps are given instead of read with bpf(2).
"""

import ipaddress

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _apply, _blocklist, _history, _packing, _policy
from ansible_collections.bpfleet.core.plugins.module_utils import _host_paths as paths
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render

CONTROLLER = ipaddress.ip_address("203.0.113.1")
NAME = "edge"


def lpm(text):
    network = ipaddress.ip_network(text)
    return _packing.lpm_key(network.version, int(network.network_address), network.prefixlen)


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "STATE_ROOT", str(tmp_path))
    return tmp_path


def applied(filter_section):
    """Record a policy on the host as bpfleet.core.policy does (state.json, applied.json); the
    live maps then hold its lists."""
    model, _warnings = _policy.validate({"name": NAME, "interfaces": ["eth0"], "filter": filter_section})
    rendered = _render.render(model)
    host = _apply.PolicyHost(None, rendered)
    document = host._state_document("2026-12-06T00:00:00Z")
    paths.write_atomic(paths.state_file(NAME), __import__("json").dumps(document))
    _history.after_apply(NAME, rendered)
    return dict((name, set(_packing.PackedList.from_transfer(packed).key_list()))
                for name, packed in rendered["lists"].items())


def edit(live, list_name, state, entries):
    v4 = sorted(_packing.key_parts(lpm(text))[0] << 8 | ipaddress.ip_network(text).prefixlen
                for text in entries if ":" not in text)
    v6 = sorted(_packing.key_parts(lpm(text))[0] << 8 | ipaddress.ip_network(text).prefixlen
                for text in entries if ":" in text)
    result = _blocklist.Edit(NAME, list_name, state, _blocklist.pack_entries(list_name, v4, v6))
    result.live = dict((name, (keys, 65536)) for name, keys in live.items())
    return result.plan()


NO_SSH = {"proto": "tcp", "port": 22, "action": "drop", "name": "no-ssh"}
SSH_ONLY = {"proto": "tcp", "port": 22, "action": "pass", "name": "ssh"}


def test_removing_the_allow_entry_under_a_port_rule_that_drops_ssh_is_a_lockout(state_root):
    live = applied({"ports": [NO_SSH], "allow": ["203.0.113.1/32"]})
    dropped, reason = edit(live, "allow", "absent", ["203.0.113.1/32"]).lockout(CONTROLLER)
    assert dropped is True, reason
    assert reason == "removing the allow entry 203.0.113.1/32 leaves it to port rule no-ssh, which drops TCP port 22"


def test_removing_the_allow_entry_under_a_port_rule_that_passes_ssh_is_safe(state_root):
    live = applied({"default": "deny", "ports": [SSH_ONLY], "allow": ["203.0.113.1/32"]})
    dropped, reason = edit(live, "allow", "absent", ["203.0.113.1/32"]).lockout(CONTROLLER)
    assert dropped is False, reason
    assert reason == "removing the allow entry 203.0.113.1/32 leaves it to port rule ssh, which passes TCP port 22"


def test_the_port_of_the_controllers_ssh_connection_decides(state_root):
    live = applied({"ports": [NO_SSH], "allow": ["203.0.113.1/32"]})
    dropped, reason = edit(live, "allow", "absent", ["203.0.113.1/32"]).lockout(CONTROLLER, 2222)
    assert (dropped, reason) == (False, "no deny entry contains it and filter.default is allow")


@pytest.mark.parametrize("filter_section, list_name, state, entries, expected", [
    ({}, "deny", "present", ["203.0.113.0/24"], (True, "the deny entry 203.0.113.0/24 contains it")),
    ({}, "deny", "present", ["198.51.100.0/24"], (False, "the entries added do not contain it")),
    ({"allow": ["203.0.113.1/32"]}, "deny", "present", ["203.0.113.0/24"],
     (False, "allowed by the allow entry 203.0.113.1/32")),
    # A deny entry beats every port rule, as in the kernel.
    ({"ports": [SSH_ONLY]}, "deny", "present", ["203.0.113.0/24"],
     (True, "the deny entry 203.0.113.0/24 contains it")),
    ({"deny": ["203.0.113.0/24"], "allow": ["203.0.113.1/32"]}, "allow", "absent", ["203.0.113.1/32"],
     (True, "removing the allow entry 203.0.113.1/32 leaves it to the deny entry 203.0.113.0/24")),
    ({"deny": ["203.0.113.0/24"], "allow": ["203.0.113.0/28", "203.0.113.1/32"]}, "allow", "absent",
     ["203.0.113.1/32"], (False, "another allow entry still contains it")),
    ({"default": "deny", "allow": ["203.0.113.1/32", "198.51.100.0/24"]}, "allow", "absent", ["198.51.100.0/24"],
     (False, "another allow entry still contains it")),
    ({"default": "deny", "allow": ["198.51.100.0/24"]}, "allow", "absent", ["198.51.100.0/24"],
     (False, "the entries removed do not contain it")),
    ({"default": "deny", "allow": ["203.0.113.1/32"]}, "allow", "absent", ["203.0.113.1/32"],
     (True, "removing the allow entry 203.0.113.1/32 leaves it to filter.default deny")),
    ({"allow": ["203.0.113.1/32"]}, "allow", "absent", ["203.0.113.1/32"],
     (False, "no deny entry contains it and filter.default is allow")),
    # Edits that neither deny more nor allow less cannot cut the controller off.
    ({"deny": ["203.0.113.0/24"]}, "deny", "absent", ["203.0.113.0/24"], None),
    ({"default": "deny"}, "allow", "present", ["203.0.113.1/32"], None),
])
def test_edits_judged_as_the_kernel_would(state_root, filter_section, list_name, state, entries, expected):
    live = applied(filter_section)
    assert edit(live, list_name, state, entries).lockout(CONTROLLER) == expected
