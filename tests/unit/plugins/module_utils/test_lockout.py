"""Lockout guard decisions: the same order as decide() in the XDP program."""

import ipaddress

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _lockout, _policy
from ansible_collections.bpfleet.core.plugins.plugin_utils import _render


def rendered(filter_section):
    model, _warnings = _policy.validate({"name": "edge", "interfaces": ["eth0"], "filter": filter_section})
    return _render.render(model)


@pytest.mark.parametrize("environ, expected", [
    ({"SSH_CONNECTION": "203.0.113.1 40022 203.0.113.11 22"}, "203.0.113.1"),
    ({"SSH_CLIENT": "2001:db8:100::1 40022 22"}, "2001:db8:100::1"),
    ({"SSH_CONNECTION": "fe80::1%eth0 40022 fe80::2%eth0 22"}, "fe80::1"),
    ({}, None),
    ({"SSH_CONNECTION": "garbage"}, None),
])
def test_controller_address(environ, expected):
    address = _lockout.controller_address(environ)
    assert (str(address) if address else None) == expected


@pytest.mark.parametrize("filter_section, address, dropped, reason_start", [
    ({"deny": ["203.0.113.0/24"]}, "203.0.113.1", True, "it matches filter.deny 203.0.113.0/24"),
    ({"deny": ["203.0.113.0/24"], "allow": ["203.0.113.1/32"]}, "203.0.113.1", False, "allowed by filter.allow"),
    ({"deny": ["198.51.100.0/24"]}, "203.0.113.1", False, "no list matches it"),
    ({"default": "deny", "allow": ["198.51.100.0/24"]}, "203.0.113.1", True, "filter.default is deny"),
    ({"default": "deny", "allow": ["203.0.113.0/24"]}, "203.0.113.1", False, "allowed by filter.allow"),
    ({"deny": ["2001:db8:100::/64"]}, "2001:db8:100::1", True, "it matches filter.deny 2001:db8:100::/64"),
    ({"deny": ["203.0.113.0/24"]}, "2001:db8:100::1", False, "no list matches it"),
])
def test_verdict(filter_section, address, dropped, reason_start):
    got_dropped, reason = _lockout.verdict(ipaddress.ip_address(address), rendered(filter_section))
    assert got_dropped is dropped
    assert reason.startswith(reason_start)


@pytest.mark.parametrize("environ, expected", [
    ({"SSH_CONNECTION": "203.0.113.1 40022 203.0.113.11 2222"}, ("203.0.113.1", 2222)),
    ({"SSH_CLIENT": "203.0.113.1 40022 22"}, ("203.0.113.1", 22)),
    ({"SSH_CONNECTION": "203.0.113.1 40022"}, ("203.0.113.1", 22)),
    ({}, (None, None)),
])
def test_controller_endpoint(environ, expected):
    address, port = _lockout.controller_endpoint(environ)
    assert ((str(address) if address else None), port) == expected


TELNET = {"proto": "tcp", "port": 23, "action": "drop"}


@pytest.mark.parametrize("filter_section, port, dropped, reason_start", [
    ({"ports": [{"proto": "tcp", "port": 22, "action": "drop", "name": "no-ssh"}]}, 22, True,
     "port rule no-ssh drops TCP port 22"),
    ({"ports": [{"proto": "tcp", "port": "20-30", "action": "drop"}]}, 22, True, "port rule ports[0] drops"),
    ({"ports": [{"proto": "any", "action": "drop"}]}, 22, True, "port rule ports[0] drops"),
    ({"ports": [{"proto": "tcp", "port": 22, "action": "drop"}]}, 2222, False, "no list matches it"),
    ({"ports": [{"proto": "udp", "port": 22, "action": "drop"}]}, 22, False, "no list matches it"),
    ({"ports": [{"proto": "tcp", "port": 22, "action": "drop", "direction": "egress"}]}, 22, False, "no list"),
    # The first rule that decides wins, as in the kernel; a log rule decides nothing.
    ({"default": "deny", "ports": [{"proto": "tcp", "port": 22, "action": "pass"}, dict(TELNET, port=22)]}, 22,
     False, "port rule ports[0] passes"),
    ({"default": "deny", "ports": [{"proto": "tcp", "port": 22, "action": "pass"}]}, 2222, True,
     "filter.default is deny"),
    ({"ports": [{"proto": "tcp", "port": 22, "action": "drop"}], "allow": ["203.0.113.1/32"]}, 22, False,
     "allowed by filter.allow"),
])
def test_verdict_with_port_rules(filter_section, port, dropped, reason_start):
    got_dropped, reason = _lockout.verdict(ipaddress.ip_address("203.0.113.1"), rendered(filter_section), port)
    assert got_dropped is dropped
    assert reason.startswith(reason_start), reason


def test_rate_limits_on_the_controller_are_reported_unless_allow_listed():
    limits = {"rate_limit": [{"name": "ssh", "match": {"proto": "tcp", "port": 22}, "per_source": 5},
                             {"name": "dns", "match": {"proto": "udp", "port": 53}, "per_source": 5}]}
    address = ipaddress.ip_address("203.0.113.1")
    assert _lockout.rate_limits_on(address, rendered(limits), 22) == ["ssh (5 packets/s, burst 5)"]
    assert _lockout.rate_limits_on(address, rendered(limits), 2222) == []
    assert _lockout.rate_limits_on(address, rendered(dict(limits, allow=["203.0.113.0/24"])), 22) == []
