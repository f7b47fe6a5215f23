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
