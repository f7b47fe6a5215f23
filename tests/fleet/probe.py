"""bpfleet traffic probe, run ON the test hosts (copied there by Ansible).

    probe.py listen   --proto udp|tcp|http --port P --duration S --out FILE [--stop-after N]
    probe.py send     --proto udp|tcp --src ADDR --dst ADDR --port P --count N [--interval S]
    probe.py http-get --src ADDR --url URL [--header 'Name: value' ...]

`listen` counts UDP datagrams, or accepted TCP connections, per source address and writes
`{"received": {"203.0.113.12": 5}, "total": 5, "done": true, ...}` to FILE. The file is
written as soon as the socket is bound (`"done": false`: the listener is ready) and again at
the end (`"done": true`), so a playbook can wait for either. `--proto http` also answers
each request with `200 OK`, as a target for HTTP header logging.

`send` binds the source address (a host can send from its 198.51.100.x alias) and prints
`{"sent": N, "connected": K, "errors": E}`; it exits 0 whatever got through, since blocked
traffic is what the tests look for. `http-get` prints `{"status": 200, ...}` or
`{"status": null, "error": ...}`, also with exit 0.

Everything is bounded in count and time, and packets only go to the documentation ranges
the test fleet uses (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32). Stdlib only, 3.9+.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

# The only networks the test fleet has; a probe never aims a packet anywhere else.
ALLOWED_DESTINATIONS = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")]
MAX_COUNT = 100_000
MAX_DURATION = 600.0
MAX_INTERVAL = 10.0
MAX_TIMEOUT = 30.0
# Whatever the arguments, `send` stops after this long.
SEND_DEADLINE = 300.0
HTTP_MAX_HEADER_BYTES = 16_384
HTTP_MAX_RESPONSE_BYTES = 65_536


class ProbeError(Exception):
    """Bad arguments, reported as `probe: error: ...` with exit code 2."""


# ---------------------------------------------------------------- addresses


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError as exc:
        raise ProbeError(f"not an IP address: {text!r}") from exc


def require_lab_destination(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = parse_address(text)
    if not any(address in network for network in ALLOWED_DESTINATIONS):
        allowed = ", ".join(str(n) for n in ALLOWED_DESTINATIONS)
        raise ProbeError(f"destination {address} is outside the test networks ({allowed})")
    return address


def family_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def display_address(raw: str) -> str:
    """'::ffff:203.0.113.12' (IPv4 on a dual-stack socket) -> '203.0.113.12'."""
    address = ipaddress.ip_address(raw.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def bounded(value: float, upper: float, what: str) -> float:
    if not 0 <= value <= upper:
        raise ProbeError(f"{what} must be between 0 and {upper:g}")
    return value


# ---------------------------------------------------------------- listen


def dual_stack_socket(kind: int, bind: str, port: int) -> socket.socket:
    address = parse_address(bind)
    sock = socket.socket(family_of(address), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if address.version == 6:
        # Binding "::" then takes IPv4 too, seen as ::ffff:a.b.c.d.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((str(address), port))
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot listen on [{address}]:{port}: {exc}") from exc
    return sock


def write_result(path: str, result: dict) -> None:
    # Write then rename: a reader never sees half a file.
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(result, handle, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


class Tally:
    """Events per source address, with the listener's result file kept up to date."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.received: dict[str, int] = {}
        self.total = 0
        self.started = time.monotonic()

    def add(self, source: str) -> None:
        source = display_address(source)
        self.received[source] = self.received.get(source, 0) + 1
        self.total += 1

    def finished(self) -> bool:
        limit = self.args.stop_after
        return time.monotonic() - self.started >= self.args.duration or bool(limit and self.total >= limit)

    def remaining(self) -> float:
        return max(0.0, self.args.duration - (time.monotonic() - self.started))

    def save(self, done: bool) -> None:
        write_result(self.args.out, {
            "proto": self.args.proto, "port": self.args.port, "received": self.received,
            "total": self.total, "done": done,
            "elapsed": round(time.monotonic() - self.started, 3),
        })


def wait_readable(sock: socket.socket, tally: Tally) -> bool:
    readable = select.select([sock], [], [], min(0.5, tally.remaining()))[0]
    return bool(readable)


def listen_udp(sock: socket.socket, tally: Tally) -> None:
    while not tally.finished():
        if wait_readable(sock, tally):
            peer = sock.recvfrom(65_535)[1]
            tally.add(peer[0])


def read_http_request(conn: socket.socket) -> None:
    """Read up to the end of the request headers (bounded), then answer 200."""
    conn.settimeout(2.0)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < HTTP_MAX_HEADER_BYTES:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        body = b"bpfleet probe\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass


def listen_tcp(sock: socket.socket, tally: Tally) -> None:
    sock.listen(128)
    while not tally.finished():
        if not wait_readable(sock, tally):
            continue
        conn, peer = sock.accept()
        with conn:
            tally.add(peer[0])
            if tally.args.proto == "http":
                read_http_request(conn)


def command_listen(args: argparse.Namespace) -> dict:
    bounded(args.duration, MAX_DURATION, "--duration")
    kind = socket.SOCK_DGRAM if args.proto == "udp" else socket.SOCK_STREAM
    # Bounded by --duration anyway; ignoring SIGHUP lets a playbook start it with `&` in a
    # shell task without the end of that SSH session killing it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    tally = Tally(args)
    with dual_stack_socket(kind, args.bind, args.port) as sock:
        tally.save(done=False)  # the socket is bound: senders may start
        if args.proto == "udp":
            listen_udp(sock, tally)
        else:
            listen_tcp(sock, tally)
    tally.save(done=True)
    return {"received": tally.received, "total": tally.total, "out": args.out}


# ---------------------------------------------------------------- send


def bound_socket(kind: int, src: str, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> socket.socket:
    source = parse_address(src)
    if source.version != dst.version:
        raise ProbeError(f"--src {source} and --dst {dst} are not the same IP version")
    sock = socket.socket(family_of(dst), kind)
    try:
        sock.bind((str(source), 0))
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot bind source address {source} (not on this host?): {exc}") from exc
    return sock


def send_udp(args: argparse.Namespace, dst, deadline: float) -> dict:
    sent = errors = 0
    with bound_socket(socket.SOCK_DGRAM, args.src, dst) as sock:
        for index in range(args.count):
            if time.monotonic() >= deadline:
                break
            try:
                sock.sendto(f"bpfleet-probe {index}".encode(), (str(dst), args.port))
                sent += 1
            except OSError:
                errors += 1
            time.sleep(args.interval)
    return {"sent": sent, "errors": errors}


def send_tcp(args: argparse.Namespace, dst, deadline: float) -> dict:
    attempted = connected = errors = 0
    while attempted < args.count and time.monotonic() < deadline:
        attempted += 1
        with bound_socket(socket.SOCK_STREAM, args.src, dst) as sock:
            sock.settimeout(args.timeout)
            try:
                sock.connect((str(dst), args.port))
                connected += 1
            except OSError:
                # Refused, timed out (dropped), unreachable: counted, not fatal.
                errors += 1
        time.sleep(args.interval)
    return {"sent": attempted, "connected": connected, "errors": errors}


def command_send(args: argparse.Namespace) -> dict:
    dst = require_lab_destination(args.dst)
    if not 1 <= args.count <= MAX_COUNT:
        raise ProbeError(f"--count must be between 1 and {MAX_COUNT}")
    bounded(args.interval, MAX_INTERVAL, "--interval")
    bounded(args.timeout, MAX_TIMEOUT, "--timeout")
    deadline = time.monotonic() + SEND_DEADLINE
    result = send_udp(args, dst, deadline) if args.proto == "udp" else send_tcp(args, dst, deadline)
    return {"proto": args.proto, "src": args.src, "dst": str(dst), "port": args.port, **result}


# ---------------------------------------------------------------- http-get


def parse_header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip() or "\r" in text or "\n" in text:
        raise ProbeError(f"--header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def build_request(url, headers: list[tuple[str, str]], method: str) -> bytes:
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    host = url.netloc
    lines = [f"{method} {path} HTTP/1.1"]
    if not any(header[0].lower() == "host" for header in headers):
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < HTTP_MAX_RESPONSE_BYTES:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def command_http_get(args: argparse.Namespace) -> dict:
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        raise ProbeError(f"--url must be http://ADDRESS[:PORT]/PATH, got {args.url!r}")
    dst = require_lab_destination(url.hostname)
    bounded(args.timeout, MAX_TIMEOUT, "--timeout")
    headers = [parse_header(h) for h in args.header]
    request = build_request(url, headers, args.method)
    result = {"url": args.url, "src": args.src, "status": None}
    with bound_socket(socket.SOCK_STREAM, args.src, dst) as sock:
        sock.settimeout(args.timeout)
        try:
            sock.connect((str(dst), url.port or 80))
            sock.sendall(request)
            status_line = read_response(sock).split(b"\r\n", 1)[0].decode("latin-1")
        except OSError as exc:
            return {**result, "error": str(exc) or type(exc).__name__}
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return {**result, "error": f"not an HTTP response: {status_line!r}"}
    return {**result, "status": int(parts[1]), "reason": parts[2] if len(parts) > 2 else ""}


# ---------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command", required=True)

    listen = commands.add_parser("listen", help="count datagrams or connections per source")
    listen.add_argument("--proto", choices=("udp", "tcp", "http"), required=True)
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument("--duration", type=float, required=True, help=f"seconds, at most {MAX_DURATION:g}")
    listen.add_argument("--out", required=True, help="JSON result file")
    listen.add_argument("--bind", default="::", help="address to bind (default :: = all, IPv4 and IPv6)")
    listen.add_argument("--stop-after", type=int, default=0, help="stop early after this many events")
    listen.set_defaults(handler=command_listen)

    send = commands.add_parser("send", help="send UDP datagrams or make TCP connections")
    send.add_argument("--proto", choices=("udp", "tcp"), required=True)
    send.add_argument("--src", required=True, help="source address to bind")
    send.add_argument("--dst", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--count", type=int, required=True)
    send.add_argument("--interval", type=float, default=0.0, help="seconds between sends")
    send.add_argument("--timeout", type=float, default=1.0, help="TCP connect timeout, seconds")
    send.set_defaults(handler=command_send)

    http = commands.add_parser("http-get", help="one raw HTTP/1.1 request from a given source")
    http.add_argument("--src", required=True)
    http.add_argument("--url", required=True)
    http.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    http.add_argument("--method", default="GET")
    http.add_argument("--timeout", type=float, default=3.0)
    http.set_defaults(handler=command_http_get)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except ProbeError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
