"""Error classes of issue 3 that have no other home: list sizes beyond the maps, header names."""

import ipaddress
import itertools

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _policy

MINIMAL = {"name": "edge-web", "interfaces": ["eth0"]}


def problems_of(raw, source="edge.yml"):
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, source)
    return caught.value.problems


def hosts(network, count):
    return [str(address) + ("/32" if address.version == 4 else "/128")
            for address in itertools.islice(ipaddress.ip_network(network).hosts(), count)]


@pytest.mark.parametrize("key, limit_name, network, label", [
    ("allow", "ALLOW_V4_MAX", "198.51.100.0/24", "IPv4 allow"),
    ("allow", "ALLOW_V6_MAX", "2001:db8::/120", "IPv6 allow"),
    ("deny", "DENY_V4_MAX", "203.0.113.0/24", "IPv4 deny"),
    ("deny", "DENY_V6_MAX", "2001:db8:1::/120", "IPv6 deny"),
])
def test_more_entries_than_the_map_holds_is_an_error(monkeypatch, key, limit_name, network, label):
    # The real limits are 64 Ki to 1 Mi entries; a small one keeps the test fast while the
    # check itself is the one a real list meets.
    monkeypatch.setattr(_policy, limit_name, 8)
    problems = problems_of(dict(MINIMAL, filter={key: hosts(network, 9)}))
    assert "edge.yml: filter: 9 %s entries exceed the map limit of 8" % label in problems, problems
    # At the limit it is valid.
    model, _warnings = _policy.validate(dict(MINIMAL, filter={key: hosts(network, 8)}), "edge.yml")
    assert len(model["filter"]["%s_v%d" % (key, 4 if "IPv4" in label else 6)]) == 8


@pytest.mark.parametrize("field", ["headers", "redact"])
@pytest.mark.parametrize("name", ["X Api Key", "host:", "", "x-id\r\nevil", "caf\u00e9", 42])
def test_header_names_must_be_tokens(field, name):
    problems = problems_of(dict(MINIMAL, log={"fields": ["src_ip"], "http": {field: ["host", name]}}))
    assert any(p.startswith("edge.yml: log.http.%s[1]: %r is not a valid header name" % (field, name))
               for p in problems), problems


@pytest.mark.parametrize("part", ["has space", "a:b"])
def test_redact_containing_parts_must_be_tokens(part):
    problems = problems_of(dict(MINIMAL, log={"fields": ["src_ip"], "http": {"redact_containing": [part]}}))
    assert any(p.startswith("edge.yml: log.http.redact_containing[0]: %r is not part of a header name" % part)
               for p in problems), problems


def test_header_names_listed_twice_in_any_case_warn():
    model, warnings = _policy.validate(dict(MINIMAL, log={"fields": ["src_ip"],
                                                          "http": {"headers": ["Host", "host"]}}), "edge.yml")
    assert model["log"]["http"]["headers"] == ["host"]
    assert any("log.http.headers[1]" in warning and "listed twice" in warning for warning in warnings), warnings
