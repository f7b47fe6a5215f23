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

from ansible_collections.bpfleet.core.plugins.module_utils import _classifier
from ansible_collections.bpfleet.core.plugins.module_utils._rendered import RenderedPolicy

SSH_PORT = _classifier.SSH_PORT


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


def lists_of(rendered, lists=None):
    """The list maps to judge by: `lists` (for example with live edits laid over them), else
    the rendered policy's own (decoded once by a RenderedPolicy)."""
    if lists is not None:
        return lists
    return RenderedPolicy.of(rendered).lists


def verdict(address, rendered, port=SSH_PORT, lists=None):
    """(dropped, reason) for a TCP packet from `address` to `port` under the rendered filter,
    as the XDP program decides it (_classifier)."""
    packet = _classifier.Packet.tcp(address, port)
    decided = _classifier.classify(packet, RenderedPolicy.of(rendered).filter_section, lists_of(rendered, lists))
    return decided.dropped, _classifier.explain(decided, packet)


def rate_limits_on(address, rendered, port=SSH_PORT, lists=None):
    """Rate limits that would count the controller's SSH packets (allow-listed sources are exempt)."""
    decided = _classifier.xdp_verdict(_classifier.Packet.tcp(address, port),
                                      RenderedPolicy.of(rendered).filter_section, lists_of(rendered, lists))
    return [_classifier.describe_limit(limit) for limit in decided.rate_limits]
