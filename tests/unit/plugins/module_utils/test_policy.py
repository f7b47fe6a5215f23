"""Policy validation: every error names the source and the path, and all errors are reported."""

import pytest

from ansible_collections.bpfleet.core.plugins.module_utils import _policy

MINIMAL = {"name": "edge-web", "interfaces": ["eth0"]}


def problems_of(raw, source="edge.yml"):
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, source)
    return caught.value.problems


def test_minimal_policy_gets_explicit_defaults():
    model, warnings = _policy.validate(dict(MINIMAL), "edge.yml")
    assert warnings == []
    assert model["xdp_mode"] == "auto"
    assert model["filter"] == {"default": "allow", "deny_v4": [], "deny_v6": [], "allow_v4": [], "allow_v6": [],
                               "ports": [], "rate_limit": []}
    assert model["log"]["enabled"] is False
    assert model["log"]["file"] == "/var/log/bpfleet/headers.jsonl"


def test_lists_are_split_by_family_and_sorted():
    raw = dict(MINIMAL, filter={"deny": ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7/32",
                                         {"cidr": "198.51.100.0/25", "comment": "scanner"}]})
    model, _warnings = _policy.validate(raw)
    assert model["filter"]["deny_v4"] == ["198.51.100.0/25", "198.51.100.7/32", "203.0.113.0/24"]
    assert model["filter"]["deny_v6"] == ["2001:db8:bad::/48"]


@pytest.mark.parametrize("bad, expected", [
    ("10.0.0.300/24", "filter.deny[1]: not an IP network: 10.0.0.300/24"),
    ("203.0.113.5/24", "filter.deny[1]: host bits set in 203.0.113.5/24 (did you mean 203.0.113.0/24?)"),
    (42, "filter.deny[1]: not an IP network: 42"),
])
def test_bad_cidr_names_file_path_and_value(bad, expected):
    problems = problems_of(dict(MINIMAL, filter={"deny": ["198.51.100.0/24", bad]}))
    assert problems == ["edge.yml: " + expected]


def test_unknown_keys_suggest_the_close_name():
    problems = problems_of(dict(MINIMAL, filter={"deny_list": []}))
    assert problems == ["edge.yml: filter.deny_list: unknown field (did you mean 'deny'?)"]


def test_unknown_top_level_key():
    problems = problems_of(dict(MINIMAL, interface=["eth0"]))
    assert any(p.startswith("edge.yml: interface: unknown field (did you mean 'interfaces'?)") for p in problems)


@pytest.mark.parametrize("name", ["", "Edge", "-edge", "a" * 49, None, 7])
def test_bad_or_empty_name(name):
    raw = dict(MINIMAL, name=name) if name is not None else {"interfaces": ["eth0"]}
    problems = problems_of(raw)
    assert len(problems) == 1 and problems[0].startswith("edge.yml: name: ")


@pytest.mark.parametrize("interfaces", [None, [], "eth0", ["eth0", "eth0"], ["lo"], ["a" * 16], ["eth/0"]])
def test_bad_interfaces(interfaces):
    raw = {"name": "edge"} if interfaces is None else {"name": "edge", "interfaces": interfaces}
    problems = problems_of(raw)
    assert problems and all(p.startswith("edge.yml: interfaces") for p in problems)


def test_all_errors_are_reported_at_once():
    raw = {"name": "", "interfaces": [], "xdp_mode": "fast",
           "filter": {"default": "maybe", "deny": ["nope"]}, "log": {"fields": ["src_ipp"]}}
    problems = problems_of(raw)
    paths = [p.split(": ")[1] for p in problems]
    assert paths == ["name", "interfaces", "xdp_mode", "filter.default", "filter.deny[0]", "log.fields[0]"]
    assert "did you mean 'src_ip'?" in problems[-1]


def test_same_prefix_in_allow_and_deny_is_an_error():
    problems = problems_of(dict(MINIMAL, filter={"deny": ["198.51.100.0/24"], "allow": ["198.51.100.0/24"]}))
    assert problems == ["edge.yml: filter: 198.51.100.0/24 is in both filter.deny and filter.allow"]


def test_duplicates_warn_and_collapse():
    model, warnings = _policy.validate(dict(MINIMAL, filter={"deny": ["198.51.100.0/24", "198.51.100.0/24"]}),
                                       "edge.yml")
    assert model["filter"]["deny_v4"] == ["198.51.100.0/24"]
    assert warnings == ["edge.yml: filter.deny[1]: duplicate of filter.deny[0]"]


def test_log_fields_follow_schema_order_and_sample_parses():
    raw = dict(MINIMAL, log={"fields": ["dst_port", "src_ip", "src_ip"], "sample": "1/100"})
    model, _warnings = _policy.validate(raw)
    assert model["log"]["fields"] == ["src_ip", "dst_port"]
    assert model["log"]["sample"] == 100
    assert model["log"]["enabled"] is True


@pytest.mark.parametrize("sample", ["1/0", "2/3", "1/1000001", True, "often"])
def test_bad_sample(sample):
    assert problems_of(dict(MINIMAL, log={"sample": sample}))[0].startswith("edge.yml: log.sample: ")


def test_relative_sink_path_is_rejected():
    problems = problems_of(dict(MINIMAL, log={"sink": {"file": "headers.jsonl"}}))
    assert problems == ["edge.yml: log.sink.file: must be an absolute file path, got 'headers.jsonl'"]


def test_digest_ignores_key_order():
    assert _policy.digest_of({"a": 1, "b": [1, 2]}) == _policy.digest_of({"b": [1, 2], "a": 1})
    assert _policy.digest_of({"a": 1}) != _policy.digest_of({"a": 2})


def test_map_contents_carry_rule_ids():
    model, _warnings = _policy.validate(dict(MINIMAL, filter={"deny": ["198.51.100.0/24"], "allow": ["2001:db8::/64"]}))
    contents = _policy.map_contents(model)
    assert contents["deny_v4"] == [["198.51.100.0/24", _policy.RULE_IDS["deny"]]]
    assert contents["allow_v6"] == [["2001:db8::/64", _policy.RULE_IDS["allow"]]]
    assert contents["deny_v6"] == [] and contents["allow_v4"] == []


def test_non_mapping_policy():
    assert problems_of(["not", "a", "mapping"]) == ["edge.yml: (top level): a policy must be a mapping, got list"]


def reader(files):
    def read(name):
        if name not in files:
            raise OSError("No such file or directory")
        return files[name]
    return read


def test_list_files_are_read_with_line_numbers_in_errors():
    files = {"lists/deny.txt": "# scanners\n198.51.100.0/24\n\n2001:db8:bad::/48  # v6\n10.0.0.300/24\n"}
    raw = dict(MINIMAL, filter={"deny": ["203.0.113.0/24", {"file": "lists/deny.txt"}]})
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, "edge.yml", read_file=reader(files))
    assert caught.value.problems == [
        "edge.yml: filter.deny[1] (lists/deny.txt line 5): not an IP network: 10.0.0.300/24"]
    files["lists/deny.txt"] = files["lists/deny.txt"].replace("10.0.0.300/24", "203.0.113.0/24")
    model, warnings = _policy.validate(raw, "edge.yml", read_file=reader(files))
    assert model["filter"]["deny_v4"] == ["198.51.100.0/24", "203.0.113.0/24"]
    assert model["filter"]["deny_v6"] == ["2001:db8:bad::/48"]
    assert warnings == ["edge.yml: filter.deny[1] (lists/deny.txt line 5): duplicate of filter.deny[0]"]


def test_list_file_that_cannot_be_read():
    raw = dict(MINIMAL, filter={"allow": [{"file": "missing.txt"}]})
    with pytest.raises(_policy.PolicyError) as caught:
        _policy.validate(raw, "edge.yml", read_file=reader({}))
    assert caught.value.problems == [
        "edge.yml: filter.allow[0].file: cannot read list file missing.txt: No such file or directory"]


def test_list_file_without_a_reader_is_an_error_not_a_crash():
    problems = problems_of(dict(MINIMAL, filter={"deny": [{"file": "x.txt"}]}))
    assert len(problems) == 1 and problems[0].startswith("edge.yml: filter.deny[0].file: list files are read")


def test_many_duplicates_are_summarised():
    entries = ["198.51.100.0/24"] * 25
    _model, warnings = _policy.validate(dict(MINIMAL, filter={"deny": entries}), "edge.yml")
    assert len(warnings) == _policy.MAX_DUPLICATE_WARNINGS + 1
    assert warnings[-1] == "edge.yml: filter.deny: %d more duplicate entries" % (24 - _policy.MAX_DUPLICATE_WARNINGS)


@pytest.mark.parametrize("size, expected", [
    (1048576, 1048576), ("100M", 100 << 20), ("1.5G", int(1.5 * (1 << 30))), ("512k", 512 << 10), ("64KB", 64 << 10),
])
def test_sink_rotation_sizes(size, expected):
    model, _warnings = _policy.validate(dict(MINIMAL, log={"sink": {"max_size": size, "keep": 3}}))
    assert model["log"]["max_size"] == expected
    assert model["log"]["keep"] == 3


@pytest.mark.parametrize("sink, path", [
    ({"max_size": "huge"}, "log.sink.max_size"), ({"max_size": 100}, "log.sink.max_size"),
    ({"keep": 0}, "log.sink.keep"), ({"keep": True}, "log.sink.keep"), ({"rotate": 1}, "log.sink.rotate"),
])
def test_bad_sink_settings(sink, path):
    problems = problems_of(dict(MINIMAL, log={"sink": sink}))
    assert len(problems) == 1 and problems[0].startswith("edge.yml: %s: " % path)


def test_schema_lists_exactly_the_keys_the_validator_accepts():
    for path in [(), ("filter",), ("log",), ("log", "sink")]:
        for key in _policy.schema_node(*path)["properties"]:
            raw = dict(MINIMAL)
            node = raw
            for part in path:
                node = node.setdefault(part, {})
            node[key] = object()  # a wrong type, but not an unknown key
            problems = problems_of(raw)
            assert not any("unknown field" in p for p in problems), (path, key, problems)


@pytest.mark.parametrize("interfaces", ["all", ["all"]])
def test_all_interfaces_is_kept_for_the_host_to_resolve(interfaces):
    model, _warnings = _policy.validate(dict(MINIMAL, interfaces=interfaces))
    assert model["interfaces"] == [_policy.ALL_INTERFACES]


def test_all_does_not_mix_with_names():
    problems = problems_of(dict(MINIMAL, interfaces=["eth0", "all"]))
    assert problems == ["edge.yml: interfaces[1]: 'all' stands alone: write interfaces: all"]


def test_redundant_and_shadowed_entries_warn():
    raw = dict(MINIMAL, filter={"deny": ["198.51.100.0/24", "198.51.100.128/25", "203.0.113.0/28",
                                         "2001:db8::/32", "2001:db8:1::/48"],
                                "allow": ["203.0.113.0/24"]})
    model, warnings = _policy.validate(raw, "edge.yml")
    assert model["filter"]["deny_v4"] == ["198.51.100.0/24", "198.51.100.128/25", "203.0.113.0/28"]
    assert warnings == [
        "edge.yml: filter.deny: 198.51.100.128/25 lies inside 198.51.100.0/24 (redundant)",
        "edge.yml: filter.deny: 2001:db8:1::/48 lies inside 2001:db8::/32 (redundant)",
        "edge.yml: filter.deny: 203.0.113.0/28 lies inside the allow entry 203.0.113.0/24, which wins: this deny "
        "entry never matches",
    ]


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_interface_names(name):
    assert problems_of(dict(MINIMAL, interfaces=[name]))[0].startswith("edge.yml: interfaces[0]: ")


def test_logging_off_needs_no_directions():
    model, _warnings = _policy.validate(dict(MINIMAL, log={"enabled": False, "directions": []}))
    assert model["log"]["enabled"] is False


# --- port rules and rate limits ---------------------------------------------------------------

@pytest.mark.parametrize("rule, path, message", [
    ({"proto": "tcp", "port": 0, "action": "drop"}, "filter.ports[0].port", "ports are 1-65535, got 0"),
    ({"proto": "tcp", "port": 65536, "action": "drop"}, "filter.ports[0].port", "ports are 1-65535, got 65536"),
    ({"proto": "tcp", "port": "9000-8000", "action": "drop"}, "filter.ports[0].port",
     "range 9000-8000 runs backwards (did you mean 8000-9000?)"),
    ({"proto": "tcp", "port": "http", "action": "drop"}, "filter.ports[0].port",
     "must be a port (1-65535) or a range such as 6000-6100, got 'http'"),
    ({"proto": "icmp", "port": 8, "action": "drop"}, "filter.ports[0].port", "icmp has no ports"),
    ({"proto": "sctp", "action": "drop"}, "filter.ports[0].proto", "must be one of tcp, udp, icmp, any, got 'sctp'"),
    ({"proto": "tcp", "action": "reject"}, "filter.ports[0].action", "must be one of drop, pass, log, got 'reject'"),
    ({"proto": "tcp", "action": "drop", "direction": "both"}, "filter.ports[0].direction",
     "must be ingress or egress, got 'both'"),
    ({"proto": "tcp"}, "filter.ports[0]", "missing required field 'action'"),
    ({"proto": "tcp", "action": "drop", "prot": 1}, "filter.ports[0].prot", "unknown field (did you mean 'proto'?)"),
    ({"proto": "tcp", "action": "drop", "name": "deny"}, "filter.ports[0].name", "'deny' is the name of a built-in"),
    ({"proto": "tcp", "action": "drop", "name": "No Telnet"}, "filter.ports[0].name", "must be 1-32 characters"),
    ({"proto": "tcp", "action": "log"}, "filter.ports[0].action", "log needs header records"),
])
def test_port_rule_errors(rule, path, message):
    problems = problems_of(dict(MINIMAL, filter={"ports": [rule]}))
    assert any(p.startswith("edge.yml: %s: %s" % (path, message)) for p in problems), problems


@pytest.mark.parametrize("limit, path, message", [
    ({"per_source": 0}, "filter.rate_limit[0].per_source", "a rate of 0 packets/s drops everything"),
    ({"per_source": "0/s"}, "filter.rate_limit[0].per_source", "a rate of 0 packets/s drops everything"),
    ({"per_source": "50000000/s"}, "filter.rate_limit[0].per_source",
     "50000000 packets/s per source is beyond any link (at most 10000000)"),
    ({"per_source": "100/min"}, "filter.rate_limit[0].per_source", "must be packets per second such as 2000/s"),
    ({"per_source": 10, "burst": 0}, "filter.rate_limit[0].burst", "must be a whole number of packets from 1"),
    ({"per_source": 10, "burst": 10 ** 9}, "filter.rate_limit[0].burst", "must be a whole number of packets from 1"),
    ({"per_source": 10, "match": {"proto": "icmp", "port": 3}}, "filter.rate_limit[0].match.port",
     "icmp has no ports"),
    ({"per_source": 10, "match": {"port": 70000}}, "filter.rate_limit[0].match.port", "ports are 1-65535"),
    ({"per_source": 10, "match": {"prot": "tcp"}}, "filter.rate_limit[0].match.prot", "unknown field"),
    ({"burst": 10}, "filter.rate_limit[0]", "missing required field 'per_source'"),
])
def test_rate_limit_errors(limit, path, message):
    problems = problems_of(dict(MINIMAL, filter={"rate_limit": [limit]}))
    assert any(p.startswith("edge.yml: %s: %s" % (path, message)) for p in problems), problems


def test_too_many_rules_and_duplicate_names():
    problems = problems_of(dict(MINIMAL, filter={"ports": [{"proto": "tcp", "action": "drop"}] * 65}))
    assert problems == ["edge.yml: filter.ports: 65 rules exceed the limit of 64"]
    problems = problems_of(dict(MINIMAL, filter={"ports": [{"proto": "udp", "action": "drop", "name": "x"}],
                                                 "rate_limit": [{"per_source": 5, "name": "x"}]}))
    assert problems == ["edge.yml: filter.rate_limit[0].name: 'x' already names filter.ports[0]"]


def test_port_rules_and_limits_model_and_shadow_warning():
    raw = dict(MINIMAL, log={}, filter={
        "ports": [{"proto": "tcp", "port": "20-30", "action": "drop"},
                  {"proto": "tcp", "port": 23, "action": "pass", "name": "telnet"},
                  {"proto": "any", "port": " 53 ", "action": "log", "direction": "egress"}],
        "rate_limit": [{"match": {"proto": "udp"}, "per_source": "2000/s"}]})
    model, warnings = _policy.validate(raw, "edge.yml")
    assert warnings == ["edge.yml: filter.ports[1]: never matches: filter.ports[0] (ports[0]) matches every packet "
                        "it would"]
    assert model["filter"]["ports"] == [
        {"id": 16, "name": "ports[0]", "proto": "tcp", "port_low": 20, "port_high": 30, "direction": "ingress",
         "action": "drop"},
        {"id": 17, "name": "telnet", "proto": "tcp", "port_low": 23, "port_high": 23, "direction": "ingress",
         "action": "pass"},
        {"id": 18, "name": "ports[2]", "proto": "any", "port_low": 53, "port_high": 53, "direction": "egress",
         "action": "log"}]
    # burst defaults to one second's worth
    assert model["filter"]["rate_limit"] == [{"id": 128, "name": "rate_limit[0]", "proto": "udp", "port_low": 0,
                                              "port_high": 0, "rate": 2000, "burst": 2000}]
    assert _policy.rule_names(model) == {"0": "default", "1": "deny", "2": "allow", "16": "ports[0]",
                                         "17": "telnet", "18": "ports[2]", "128": "rate_limit[0]"}


def test_a_log_rule_or_another_direction_shadows_nothing():
    raw = dict(MINIMAL, log={}, filter={"ports": [{"proto": "tcp", "action": "log"},
                                                  {"proto": "tcp", "port": 22, "action": "drop", "direction": "egress"},
                                                  {"proto": "tcp", "port": 22, "action": "drop"},
                                                  {"proto": "udp", "port": 22, "action": "drop"}]})
    assert _policy.validate(raw, "edge.yml")[1] == []
