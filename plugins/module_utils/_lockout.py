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


def controller_address(environ=None):
    """The SSH client address of this module run, or None for a local or non-SSH connection."""
    environ = os.environ if environ is None else environ
    for variable in ("SSH_CONNECTION", "SSH_CLIENT"):
        words = (environ.get(variable) or "").split()
        if words:
            try:
                return ipaddress.ip_address(words[0].split("%", 1)[0])
            except ValueError:
                return None
    return None


def _first_match(address, entries):
    for cidr, _rule in entries:
        network = ipaddress.ip_network(cidr)
        if network.version == address.version and address in network:
            return network
    return None


def verdict(address, rendered):
    """(dropped, reason) for a packet from `address` under the rendered policy's filter.

    Mirrors decide() in bpf/bpfleet.c.j2: an allow entry wins, then a deny entry, then the
    policy's default.
    """
    family = "v4" if address.version == 4 else "v6"
    contents = rendered["map_contents"]
    allowed = _first_match(address, contents["allow_" + family])
    if allowed is not None:
        return False, "allowed by filter.allow %s" % allowed
    denied = _first_match(address, contents["deny_" + family])
    if denied is not None:
        return True, "it matches filter.deny %s" % denied
    if rendered.get("filter_default") == "deny":
        return True, "filter.default is deny and no filter.allow entry matches it"
    return False, "no list matches it and filter.default is allow"
