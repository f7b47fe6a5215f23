# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who runs a change, as the controller knows it, for the hosts' audit trail (docs/security.md).

The host adds what it sees itself (the SSH client's address, the user the module runs as);
the controller's user and host name can only come from here.
"""

from __future__ import annotations

import getpass
import socket


def controller_actor():
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {"user": user, "host": socket.gethostname()}
