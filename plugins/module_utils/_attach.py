# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read and change XDP and tc clsact attachments through iproute2.

iproute2 is on every host, speaks netlink for us, and its replace operations are atomic: the
kernel swaps the program pointer, so there is no window without a filter.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

# ip -d -j link: xdp.mode values (uapi XDP_ATTACHED_*).
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}
IP_MODE_KEYWORD = {"native": "xdpdrv", "generic": "xdpgeneric"}

# Our tc filters live at one preference and handle, so foreign filters on other preferences
# coexist and ours can be replaced in place.
TC_PREF = "1024"
TC_HANDLE = "0xbf"

OWN_PROGRAM_PREFIX = "bpfleet_"


class InterfaceMissing(Exception):
    pass


def link_info(runner, iface):
    rc, out, err = runner.query(["ip", "-d", "-j", "link", "show", "dev", iface], check_rc=False)
    if rc != 0:
        raise InterfaceMissing("interface %s does not exist on this host (%s)" % (iface, (err or out).strip()))
    data = json.loads(out)
    return data[0] if data else {}


def all_interfaces(runner):
    """Every interface of the host except loopback, sorted."""
    links = runner.query_json(["ip", "-j", "link", "show"])
    return sorted(link["ifname"] for link in links if "LOOPBACK" not in link.get("flags", []))


def xdp_attachment(runner, iface):
    """The XDP program attached to an interface, or None."""
    xdp = link_info(runner, iface).get("xdp")
    if not xdp or "prog" not in xdp:
        return None
    prog = xdp["prog"]
    return {
        "prog_id": prog.get("id"),
        "name": prog.get("name", ""),
        "tag": prog.get("tag", ""),
        "mode": XDP_ATTACHED_MODES.get(xdp.get("mode"), str(xdp.get("mode"))),
    }


def has_clsact(runner, iface):
    for qdisc in runner.query_json(["tc", "-j", "qdisc", "show", "dev", iface]):
        if qdisc.get("kind") == "clsact":
            return True
    return False


def tc_attachment(runner, iface, direction):
    """Our tc filter (at TC_PREF/TC_HANDLE) on ingress or egress, or None."""
    if not has_clsact(runner, iface):
        return None
    filters = runner.query_json(["tc", "-j", "filter", "show", "dev", iface, direction])
    for entry in filters:
        options = entry.get("options") or {}
        if str(entry.get("pref")) == TC_PREF and options.get("handle") == TC_HANDLE and "prog" in options:
            prog = options["prog"]
            return {"prog_id": prog.get("id"), "name": prog.get("name", ""), "tag": prog.get("tag", "")}
    return None


def tc_filter_count(runner, iface, direction):
    return len([f for f in runner.query_json(["tc", "-j", "filter", "show", "dev", iface, direction])
                if f.get("options")])


def attach_xdp(runner, iface, mode, pin_path, check_rc=True):
    """Attach (or atomically replace) the pinned XDP program in native or generic mode."""
    return runner.change(["ip", "-force", "link", "set", "dev", iface, IP_MODE_KEYWORD[mode], "pinned", pin_path],
                         check_rc=check_rc)


def detach_xdp(runner, iface, mode):
    keyword = IP_MODE_KEYWORD.get(mode, "xdp")
    return runner.change(["ip", "link", "set", "dev", iface, keyword, "off"])


def ensure_clsact(runner, iface):
    if has_clsact(runner, iface):
        return False
    runner.change(["tc", "qdisc", "add", "dev", iface, "clsact"])
    return True


def attach_tc(runner, iface, direction, pin_path):
    return runner.change(["tc", "filter", "replace", "dev", iface, direction, "pref", TC_PREF, "handle", TC_HANDLE,
                          "bpf", "direct-action", "object-pinned", pin_path])


def detach_tc(runner, iface, direction):
    return runner.change(["tc", "filter", "delete", "dev", iface, direction, "pref", TC_PREF, "handle", TC_HANDLE,
                          "bpf"])


def remove_clsact(runner, iface):
    return runner.change(["tc", "qdisc", "delete", "dev", iface, "clsact"])


def driver_of(runner, iface):
    """The interface's driver as sysfs names it ("virtio_net", "mlx5_core"), or the link kind
    of a virtual device without one ("veth", "bridge"), or None."""
    try:
        return os.path.basename(os.readlink("/sys/class/net/%s/device/driver" % iface))
    except OSError:
        pass
    try:
        return (link_info(runner, iface).get("linkinfo") or {}).get("info_kind")
    except Exception:  # a vanished interface is reported elsewhere; the driver is a detail
        return None
