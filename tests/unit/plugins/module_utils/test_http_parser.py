# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP request parser and redaction rules (module_utils/_http.py), and the Python model of
the kernel scanner: examples first, then hypothesis properties over generated requests and
arbitrary bytes. Pure Python; the same automaton in the real kernel is tested by
test_http_kernel.py."""

import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.bpfleet.core.plugins.module_utils import _http, _records

R = _http.REDACTED


def parse(payload, truncated=False, **config):
    return _http.RequestParser(**config)(payload, truncated)


# --- examples ------------------------------------------------------------------------------

def test_request_line_and_kept_headers():
    result = parse(b"GET /index.html HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n"
                   b"Content-Type: text/plain\r\nX-Request-Id: abc\r\n\r\nbody")
    assert result == {"method": "GET", "path": "/index.html", "version": "HTTP/1.1", "truncated": False,
                      "headers": {"host": "web", "user-agent": "curl/8.0", "content-type": "text/plain",
                                  "x-request-id": "abc"}}


@pytest.mark.parametrize("name", [
    "Authorization", "proxy-authorization", "COOKIE", "Set-Cookie", "x-api-key", "X_Api_Key", "x-auth-token",
    "Token", "client-secret", "My-Api-Key", "X-ApiKey", "db_password", "Authorization ", "X-Secret-Thing",
])
def test_sensitive_headers_are_redacted_by_default_whether_kept_or_not(name):
    payload = b"GET / HTTP/1.1\r\nHost: a\r\n" + name.encode() + b": Bearer s3cr3t-value\r\n\r\n"
    for headers in (("host",), ("host", name.strip())):
        result = parse(payload, headers=headers)
        assert result["headers"] == {"host": "a", name.strip().lower(): R}
        assert "s3cr3t" not in json.dumps(result)


def test_policy_rules_add_names_and_parts():
    payload = b"POST /x HTTP/1.0\r\nX-Session: one\r\nX-Tenant-Signature: two\r\nX-Other: three\r\n\r\n"
    result = parse(payload, headers=("x-session", "x-other"), redact=("X-Session",), redact_containing=("signature",))
    assert result["headers"] == {"x-session": R, "x-tenant-signature": R, "x-other": "three"}
    assert parse(payload, headers=("x-session",))["headers"] == {"x-session": "one"}


def test_query_parameters_are_redacted_in_the_path():
    result = parse(b"GET /s?q=cats&api_key=K1&access_token=T1&API%5FKEY=K2&page=2&flag HTTP/1.1\r\n\r\n")
    assert result["path"] == "/s?q=cats&api_key=%s&access_token=%s&API%%5FKEY=%s&page=2&flag" % (R, R, R)


def test_obs_fold_continues_the_header_before_it():
    payload = (b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n  s3cr3t-more\r\nUser-Agent: a\r\n\tb\r\n"
               b"X-No-Colon\r\n  c\r\n\r\n")
    result = parse(payload, headers=("user-agent",))
    assert result["headers"] == {"authorization": R, "user-agent": "a b"}
    assert "s3cr3t" not in json.dumps(result)


def test_cr_alone_ends_a_line_so_a_header_cannot_hide_in_a_value():
    payload = b"GET / HTTP/1.1\r\nHost: a\rAuthorization: Bearer s3cr3t\r\n\r\n"
    result = parse(payload)
    assert result["headers"] == {"host": "a", "authorization": R}
    scanned, end = _http.scan_like_the_kernel(payload, _http.RedactionRules())
    assert b"s3cr3t" not in scanned and end == len(payload) - 1


def test_repeated_headers_are_joined():
    result = parse(b"GET / HTTP/1.1\r\nX-Request-Id: a\r\nx-request-id: b\r\n\r\n")
    assert result["headers"] == {"x-request-id": "a, b"}


@pytest.mark.parametrize("payload, truncated", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: cu", False),      # no blank line: the rest is in the next segment
    (b"GET / HTTP/1.1\r\nHost: a\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),                # the kernel says it cut the capture
])
def test_requests_without_their_end_are_truncated(payload, truncated):
    result = parse(payload, truncated)
    assert result["truncated"] is True
    assert result["headers"]["host"] == "a"


def test_a_request_line_cut_short_still_says_what_it_can():
    assert parse(b"GET /very/long/path?token=abc", True) == {
        "method": "GET", "path": "/very/long/path?token=" + R, "version": None, "headers": {}, "truncated": True}
    assert parse(b"GET /very/long/pa", False) is None           # not cut: not a request line


@pytest.mark.parametrize("payload", [
    b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"get / HTTP/1.1\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n",
    b"GET /\r\n\r\n", b"GET  / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
def test_what_is_not_an_http1_request_gives_none(payload):
    assert parse(payload) is None


def test_values_become_json_strings_on_one_line():
    payload = b'GET / HTTP/1.1\r\nUser-Agent: a"b\\c\x00\x1b[31m\xff\xfe}\r\n\r\n'
    line = json.dumps({"http": parse(payload, headers=("user-agent",))}, ensure_ascii=True)
    assert "\n" not in line and "\r" not in line
    assert json.loads(line)["http"]["headers"]["user-agent"].startswith('a"b\\c\x00\x1b[31m')


def test_the_decoder_writes_http_from_a_record_payload():
    payload = b"GET /a?token=x HTTP/1.1\r\nHost: h\r\nAuthorization: ******\r\n\r"
    raw = _records.RECORD.pack(5, 2, 200, 0, 0, 0, 0, 0x0800, b"\0" * 6, b"\0" * 6, 4, 6, 64, 0x18, 40000, 80,
                               b"\0" * 16, b"\0" * 16, len(payload), _records.PAYLOAD_REDACTED, 1, 0) + payload
    config = {"ports": [80], "headers": ["host"], "redact": [], "redact_containing": [], "max_bytes": 512}
    decoder = _records.RecordDecoder(["dst_port", "http"], "h1", http=config)
    record = decoder.decode(raw, 0)
    assert record["http"] == {"method": "GET", "path": "/a?token=" + R, "version": "HTTP/1.1",
                              "headers": {"host": "h", "authorization": R}, "truncated": False}
    assert _records.RecordDecoder(["dst_port"], "h1", http=config).decode(raw, 0).get("http") is None


def test_from_config_ignores_what_it_does_not_know():
    parser = _http.RequestParser.from_config({"headers": ["Host", 5, None], "redact": "x", "future": 1})
    assert parser(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n")["headers"] == {"host": "a"}
    assert _http.RequestParser.from_config(None) is None


# --- the kernel's constants and automaton ------------------------------------------------------

def test_kernel_constants_follow_the_normalized_name():
    assert _http.kernel_name_hash("Authorization") == _http.kernel_name_hash(b"authorization")
    assert _http.kernel_name_hash("X_Api_Key") == _http.kernel_name_hash("x-api-key")
    mask, value = _http.kernel_tail_pattern("Token")
    assert (mask, value) == (0xFFFFFFFFFF, int.from_bytes(b"token", "big"))
    mask, value = _http.kernel_tail_pattern("authentication")        # longer than 8: its last 8 bytes
    assert value == int.from_bytes(b"tication", "big") and mask == (1 << 64) - 1


def test_name_table_puts_each_name_in_its_own_slot():
    names = [("x-header-%d" % index).encode() for index in range(40)] + list(_http.RedactionRules().names)
    bits, multiplier, slots = _http.kernel_name_table(names)
    assert len(slots) == 1 << bits and len(slots) >= 2 * len(names)
    for name in names:
        value = _http.kernel_name_hash(name)
        assert slots[((value * multiplier) & ((1 << 64) - 1)) >> (64 - bits)] == value


def test_every_state_and_class_has_a_transition():
    assert len(_http.SCAN_STATES) == 16 and len(_http.SCAN_CLASSES) <= _http.SCAN_WIDTH
    assert set(_http.SCANNER_TRANSITIONS) == {(s, c) for s in _http.SCAN_STATES for c in _http.SCAN_CLASSES}
    states = list(_http.SCAN_STATES)
    # DECIDE adds 1 to the state: VALUE + 1 must be SECRET, QUERY_VALUE + 1 QUERY_SECRET.
    for target, actions in _http.SCANNER_TRANSITIONS.values():
        if actions & _http.DECIDE:
            assert states[states.index(target) + 1] == {"VALUE": "SECRET", "QUERY_VALUE": "QUERY_SECRET"}[target]


@pytest.mark.parametrize("payload", [
    b"GET ZXhh-rest-of-a-token\r\nX: y\r\n\r\n",        # a value split just before "GET "
    b"POST / HTTP/2.0\r\n\r\n", b"GET /\r\n\r\n", b"GET\r\n",
])
def test_kernel_model_refuses_a_first_line_that_is_no_request_line(payload):
    assert _http.scan_like_the_kernel(payload, _http.RedactionRules()) is None
    assert parse(payload) is None


def test_kernel_model_blanks_values_and_stops_at_the_blank_line():
    payload = (b"GET /p?a=1&client_secret=s3cr3t&b=2 HTTP/1.1\r\nHost: h\r\nCookie: s3cr3t\r\n"
               b"X-Trace: t\r\n\r\nbody with s3cr3t")
    scanned, end = _http.scan_like_the_kernel(payload, _http.RedactionRules())
    assert end == payload.index(b"\r\n\r\n") + 3
    assert scanned == (b"GET /p?a=1&client_secret=******&b=2 HTTP/1.1\r\nHost: h\r\nCookie:*******\r\n"
                       b"X-Trace: t\r\n\r")


# --- properties ----------------------------------------------------------------------------

def _settings(examples):
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SECRET_CHARS = string.ascii_letters + string.digits + "-_."
# Other values are drawn from characters no secret uses, so a secret cannot turn up by chance.
PLAIN_CHARS = "!#$%()*+,/;<>@[]^{|}~ "
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
secrets = st.text(SECRET_CHARS, min_size=12, max_size=40).map(lambda s: "S3" + s)
plain_values = st.text(PLAIN_CHARS, max_size=30).map(str.strip)
plain_names = st.sampled_from(("host", "user-agent", "accept", "content-type", "x-request-id", "via", "x-b3"))
line_breaks = st.sampled_from((b"\r\n", b"\n", b"\r\n", b"\r"))


def _case(draw, name):
    return "".join(draw(st.sampled_from((c.lower(), c.upper()))) for c in name)


@st.composite
def sensitive_names(draw):
    kind = draw(st.sampled_from(("default", "part", "policy")))
    if kind == "default":
        name = draw(st.sampled_from(_http.DEFAULT_REDACT_NAMES))
    elif kind == "part":
        part = draw(st.sampled_from(_http.DEFAULT_REDACT_CONTAINING))
        name = draw(st.sampled_from(("", "x-", "my_"))) + part + draw(st.sampled_from(("", "-id", "s")))
    else:
        name = "x-session"
    return _case(draw, name).replace("-", draw(st.sampled_from(("-", "_"))))


@st.composite
def requests_with_secrets(draw):
    """(payload bytes, secrets in it): headers and query parameters with secret values, among
    plain ones, with any line breaks and folded continuation lines."""
    hidden = []
    method = draw(st.sampled_from(_http.METHODS))
    query = []
    for _index in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            secret = draw(secrets)
            hidden.append(secret)
            query.append(draw(st.sampled_from(("api_key", "access_token", "apikey", "password", "x-api-key")))
                         + "=" + secret)
        else:
            query.append(draw(st.sampled_from(("q", "page", "lang"))) + "=" + draw(st.text("abc123", max_size=6)))
    target = "/" + draw(st.text("abcxyz/", max_size=12)) + ("?" + "&".join(query) if query else "")
    lines = [("%s %s HTTP/1.%d" % (method, target, draw(st.integers(0, 1)))).encode()]
    for _index in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            secret = draw(secrets)
            hidden.append(secret)
            value = draw(st.sampled_from(("Bearer ", "Basic ", "", "a=b; sid="))) + secret
            lines.append(("%s:%s%s" % (draw(sensitive_names()), draw(st.sampled_from(("", " ", "\t"))),
                                       value)).encode())
            if draw(st.integers(0, 4)) == 0:
                more = draw(secrets)
                hidden.append(more)
                lines.append((draw(st.sampled_from((" ", "\t"))) + more).encode())
        else:
            lines.append(("%s: %s" % (_case(draw, draw(plain_names)), draw(plain_values))).encode())
    ended = draw(st.booleans())
    payload = b""
    for line in lines:
        payload += line + draw(line_breaks)
    if ended:
        payload += draw(line_breaks) + draw(st.binary(max_size=20))
    return payload, hidden


@_settings(400)
@given(requests_with_secrets(), st.integers(0, 200), st.booleans())
def test_no_secret_leaves_the_parser_or_the_kernel_model(request, cut, capture_cut):
    payload, hidden = request
    # The capture may end inside the request (max_bytes, or the segment ended).
    captured = payload[:max(0, len(payload) - cut)] if capture_cut else payload
    kernel = _http.scan_like_the_kernel(captured, _http.RedactionRules(("x-session",)))
    assert kernel is not None, "a request the kernel did not take for one"
    scanned, end = kernel
    direct = parse(captured, end is None, redact=("X-Session",))
    from_kernel = parse(scanned, end is None, redact=("X-Session",))
    for secret in hidden:
        for text in (json.dumps(direct), json.dumps(from_kernel)):
            assert secret[:8] not in text
        assert secret[:8].encode() not in scanned
    # Whatever the kernel blanked, the agent writes the same record.
    assert from_kernel == direct


RULES = _http.RedactionRules(("x-session", "x-custom-key"), ("sig", "auth"))


@_settings(600)
@given(st.one_of(st.binary(max_size=600),
                 st.lists(st.sampled_from([b"GET ", b"/a", b"?", b"&", b"=", b"token", b"Authorization", b":", b" ",
                                           b"\t", b"\r", b"\n", b"\r\n", b"HTTP/1.1", b"x", b"_", b"\xff", b"sig",
                                           b"api-key", b"cookie", b"X-Session"]), max_size=80).map(b"".join)),
       st.booleans())
def test_the_parser_never_raises_and_the_kernel_model_agrees(payload, truncated):
    result = _http.RequestParser(headers=("host", "x"), redact=("x-session", "x-custom-key"),
                                 redact_containing=("sig", "auth"))(payload, truncated)
    assert result is None or set(result) == {"method", "path", "version", "headers", "truncated"}
    if result is not None:
        line = json.dumps(result, ensure_ascii=True)
        assert "\n" not in line and "\r" not in line
        assert all(isinstance(key, str) and isinstance(value, str) for key, value in result["headers"].items())
    parser = _http.RequestParser(headers=("host", "x"), redact=("x-session", "x-custom-key"),
                                 redact_containing=("sig", "auth"))
    kernel = _http.scan_like_the_kernel(payload, RULES)
    if kernel is None:
        # The kernel refuses a first line without " HTTP/1.x" at its end; so does the agent.
        assert parser(payload, True) is None and parser(payload, False) is None
        return
    scanned, end = kernel
    assert len(scanned) == (end if end is not None else len(payload))
    # Only value bytes change, and only to '*': no line break is ever added or removed.
    for before, after in zip(payload, scanned, strict=False):
        assert after == before or (after == ord("*") and before not in b"\r\n")
    assert parser(scanned, end is None) == parser(payload, end is None)


@_settings(300)
@given(st.binary(max_size=300), st.integers(0, 255), st.integers(0, 600))
def test_the_decoder_survives_any_record_with_a_payload(payload, flags, claimed):
    header = _records.RECORD.pack(1, 2, 3, 0, 0, 0, 0, 0x0800, b"\0" * 6, b"\0" * 6, 4, 6, 64, 0, 1, 80,
                                  b"\0" * 16, b"\0" * 16, claimed, flags, 1, 0)
    decoder = _records.RecordDecoder(["http", "dst_port"], "h", http={"headers": ["host"]})
    result = decoder.decode_batch([header + payload], 0)
    assert len(result.records) + result.malformed == 1
    assert result.malformed == (1 if claimed > len(payload) else 0)
    for record in result.records:
        json.dumps(record)
    if claimed > len(payload):
        with pytest.raises(_records.MalformedRecord) as caught:
            decoder.decode(header + payload, 0)
        # The reason names sizes, never payload bytes.
        assert re.fullmatch(r"payload_len \d+ but only \d+ bytes follow the fixed part", str(caught.value))
