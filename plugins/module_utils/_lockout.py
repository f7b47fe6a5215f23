# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lockout guard: would the rendered policy drop the controller's own SSH connection?

The module runs inside the SSH session Ansible opened, so SSH_CONNECTION names the address
the controller reaches this host from. A policy whose XDP filter drops that address would cut
the fleet off at the next packet; it is refused unless the operator says otherwise.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os

from ansible_collections.bpfleet.core.plugins.module_utils import _packing

SSH_PORT = 22


def controller_address(environ=None):
    """The SSH client address of this module run, or None for a local or non-SSH connection."""
    return controller_endpoint(environ)[0]


def controller_endpoint(environ=None):
    """(client address, server port) of this module's SSH session; (None, None) without one.

    SSH_CONNECTION is "client-address client-port server-address server-port"; SSH_CLIENT
    has no server address, and its third word is the server port.
    """
    environ = os.environ if environ is None else environ
    for variable, port_index in (("SSH_CONNECTION", 3), ("SSH_CLIENT", 2)):
        words = (environ.get(variable) or "").split()
        if words:
            try:
                address = ipaddress.ip_address(words[0].split("%", 1)[0])
            except ValueError:
                return None, None
            try:
                port = int(words[port_index])
            except (IndexError, ValueError):
                port = SSH_PORT
            return address, port
    return None, None


def _matches_ssh(rule, port):
    """Does a port rule or rate-limit match of the rendered policy match TCP to `port`?"""
    if rule["proto"] not in ("tcp", "any"):
        return False
    return not rule["port_low"] or rule["port_low"] <= port <= rule["port_high"]


def _network_text(version, entry):
    network, length = entry
    return "%s/%d" % (ipaddress.ip_address(network) if version == 4 else ipaddress.IPv6Address(network), length)


def _first_match(address, entries):
    """The widest entry of a list (an object with matches(), see _packing) containing `address`."""
    found = entries.matches(int(address))
    return ipaddress.ip_network(_network_text(address.version, found[0])) if found else None


def lists_of(rendered, lists=None):
    """The list maps to judge by: `lists` (for example with live edits laid over them), else
    the rendered policy's own, unpacked once and kept in the rendered dict."""
    if lists is not None:
        return lists
    if "_unpacked_lists" not in rendered:
        rendered["_unpacked_lists"] = _packing.unpack_lists(rendered["lists"])
    return rendered["_unpacked_lists"]


def verdict(address, rendered, port=SSH_PORT, lists=None):
    """(dropped, reason) for a TCP packet from `address` to `port` under the rendered filter.

    Mirrors classify() in bpf/bpfleet.c.j2: an allow entry wins, then a deny entry, then the
    first ingress port rule that drops or passes, then the policy's default.
    """
    family = "v4" if address.version == 4 else "v6"
    contents = lists_of(rendered, lists)
    allowed = _first_match(address, contents["allow_" + family])
    if allowed is not None:
        return False, "allowed by filter.allow %s" % allowed
    denied = _first_match(address, contents["deny_" + family])
    if denied is not None:
        return True, "it matches filter.deny %s" % denied
    for rule in (rendered.get("filter") or {}).get("ports") or []:
        if rule["direction"] == "ingress" and rule["action"] != "log" and _matches_ssh(rule, port):
            if rule["action"] == "drop":
                return True, "port rule %s drops TCP port %d" % (rule["name"], port)
            return False, "port rule %s passes TCP port %d" % (rule["name"], port)
    if rendered.get("filter_default") == "deny":
        return True, "filter.default is deny and no filter.allow entry matches it"
    return False, "no list matches it and filter.default is allow"


def rate_limits_on(address, rendered, port=SSH_PORT, lists=None):
    """Rate limits that would count the controller's SSH packets (allow-listed sources are exempt)."""
    family = "v4" if address.version == 4 else "v6"
    if _first_match(address, lists_of(rendered, lists)["allow_" + family]) is not None:
        return []
    return ["%s (%d packets/s, burst %d)" % (limit["name"], limit["rate"], limit["burst"])
            for limit in (rendered.get("filter") or {}).get("rate_limit") or [] if _matches_ssh(limit, port)]
