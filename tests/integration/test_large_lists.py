"""Deny lists of real size: 1,000,000 IPv4 and 100,000 IPv6 prefixes in one policy, from list files.

h1 carries the policy. The big files hold h3's addresses (denied) among a million others; h2
is an allowed source. Each step prints its wall time (the machine may be shared: compare the
figures with docs/lists.md as orders of magnitude).
"""

from __future__ import annotations

import json
import random
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".tmp" / "collections"
LAB_HOSTS = 3
V4_COUNT = 1000000
V6_COUNT = 100000
NAME = "biglists"


def write_lists(directory: Path, denied_v4: str, denied_v6: str) -> tuple[Path, Path, list[str]]:
    """Deterministic list files: 900,000 /32 in 10.0.0.0/8 and 100,000 /24 in 20.0.0.0-59.255.255.255
    (one of them swapped for h3's address), and 100,000 /112 in 2001:db8:f000::/48 plus h3's /128."""
    rnd = random.Random(4)
    hosts = set()
    while len(hosts) < 900000:
        hosts.add(rnd.randrange(10 << 24, 11 << 24))
    nets = set()
    while len(nets) < 100000 - 1:
        nets.add(rnd.randrange(20 << 16, 60 << 16))
    v4 = ["%d.%d.%d.%d/32" % (a >> 24, a >> 16 & 255, a >> 8 & 255, a & 255) for a in hosts]
    v4 += ["%d.%d.%d.0/24" % (a >> 16, a >> 8 & 255, a & 255) for a in nets]
    v4.append(denied_v4 + "/32")
    rnd.shuffle(v4)
    v6 = set()
    while len(v6) < V6_COUNT - 1:
        v6.add("2001:db8:f000:%x:%x:%x:%x:0/112" % tuple(rnd.getrandbits(16) for _index in range(4)))
    v6 = sorted(v6) + [denied_v6 + "/128"]
    v4_file = directory / "deny-v4.txt"
    v6_file = directory / "deny-v6.txt"
    v4_file.write_text("# a million IPv4 prefixes\n" + "\n".join(v4) + "\n")
    v6_file.write_text("\n".join(v6) + "\n")
    return v4_file, v6_file, v4


def policy(v4_file: Path, v6_file: Path) -> dict:
    return {"name": NAME, "interfaces": ["eth0"], "xdp_mode": "auto",
            "filter": {"default": "allow", "deny": [{"file": str(v4_file)}, {"file": str(v6_file)}]}}


def timed(lab, tasks, hosts="h1", **kwargs):
    started = time.monotonic()
    outcome = lab.playbook(tasks, hosts=hosts, **kwargs)
    return outcome["h1"][0], time.monotonic() - started


def xdp_prog_id(lab, host: str):
    link = json.loads(lab.exec(host, "ip", "-d", "-j", "link", "show", "dev", "eth0").stdout)[0]
    return (link.get("xdp") or {}).get("prog", {}).get("id")


COUNT_ENTRIES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
    counts = {}
    for name, key_size in (("deny_v4", 8), ("deny_v6", 20)):
        with bpf.open_pinned("/sys/fs/bpf/bpfleet/%s/maps/%s" % (sys.argv[2], name)) as fd:
            counts[name] = bpf.map_read_all(fd, key_size, 4)[2]
    print(json.dumps(counts))
""")

# Fill a scratch LPM trie the size of the big deny list: the kernel side of a first load alone.
FILL_ALONE = textwrap.dedent("""
    import json, struct, sys, time
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf
    count = int(sys.argv[2])
    keys = b"".join(struct.pack("=I", 32) + (0x0A000000 + i).to_bytes(4, "big") for i in range(count))
    values = struct.pack("=I", 1) * count
    fd = bpf.map_create(bpf.MAP_TYPE_LPM_TRIE, 8, 4, 1 << 20, bpf.BPF_F_NO_PREALLOC, "fill_bench")
    try:
        started = time.monotonic()
        bpf.map_update_batch_packed(fd, keys, values, 8, 4)
        fill = time.monotonic() - started
        started = time.monotonic()
        read = bpf.map_read_all(fd, 8, 4)[2]
        read_seconds = time.monotonic() - started
    finally:
        bpf.close_fd(fd)
    print(json.dumps({"fill_s": fill, "read_s": read_seconds, "read": read}))
""")


@pytest.fixture(scope="module")
def big(lab, tmp_path_factory):
    directory = tmp_path_factory.mktemp("biglists")
    h3 = lab.hosts["h3"]
    v4_file, v6_file, v4 = write_lists(directory, h3["lab_ipv4"], h3["lab_ipv6"])
    lab.playbook([{"name": "host role", "ansible.builtin.include_role": {"name": "bpfleet.core.host"}}], hosts="h1")
    return {"lab": lab, "dir": directory, "v4_file": v4_file, "v6_file": v6_file, "v4": v4,
            "policy": policy(v4_file, v6_file)}


def test_first_load_rerun_delta_and_traffic(big, capsys):
    lab = big["lab"]
    task = {"name": "big policy", "bpfleet.core.policy": {"policy": big["policy"]}}
    first, first_s = timed(lab, [task])
    assert first["changed"] is True and first["compiled"] is True
    changes = dict((c["map"], c) for c in first["map_changes"])
    assert changes["deny_v4"]["added"] == V4_COUNT and changes["deny_v6"]["added"] == V6_COUNT
    counted = json.loads(lab.exec("h1", "/usr/bin/python3", "-c", COUNT_ENTRIES, str(COLLECTIONS), NAME).stdout)
    assert counted == {"deny_v4": V4_COUNT, "deny_v6": V6_COUNT}

    h1, h2, h3 = lab.hosts["h1"], lab.hosts["h2"], lab.hosts["h3"]
    assert lab.udp_delivered("h3", h3["lab_ipv4"], "h1", h1["lab_ipv4"]) == 0, "denied IPv4 source got through"
    assert lab.udp_delivered("h3", h3["lab_ipv6"], "h1", h1["lab_ipv6"]) == 0, "denied IPv6 source got through"
    assert lab.udp_delivered("h2", h2["lab_ipv4"], "h1", h1["lab_ipv4"]) == 10, "allowed IPv4 source dropped"
    assert lab.udp_delivered("h2", h2["lab_ipv6"], "h1", h1["lab_ipv6"]) == 10, "allowed IPv6 source dropped"

    prog = xdp_prog_id(lab, "h1")
    again, again_s = timed(lab, [task])
    assert again["changed"] is False and again["compiled"] is False and again["commands"] == []

    # A 1,000-entry delta: 500 prefixes out, 500 new ones in, in the same file.
    v4 = list(big["v4"])
    dropped = [line for line in v4 if line.startswith("10.")][:500]
    gone = set(dropped)
    kept = [line for line in v4 if line not in gone]
    added = ["11.0.%d.%d/32" % (i // 256, i % 256) for i in range(500)]
    big["v4_file"].write_text("\n".join(kept + added) + "\n")
    delta, delta_s = timed(lab, [task])
    assert delta["changed"] is True and delta["compiled"] is False
    assert len(delta["map_changes"]) == 1, delta["map_changes"]
    change = delta["map_changes"][0]
    assert {key: change[key] for key in ("map", "added", "removed", "added_sample")} == {
        "map": "deny_v4", "added": 500, "removed": 500, "added_sample": added[:5]}
    # Five of the 500 prefixes that left the file (which five depends on the map's order).
    removed_sample = change["removed_sample"]
    assert len(removed_sample) == 5 and len(set(removed_sample)) == 5, removed_sample
    assert set(removed_sample) <= gone, removed_sample
    assert xdp_prog_id(lab, "h1") == prog, "a list delta must not replace the program"
    assert lab.udp_delivered("h3", h3["lab_ipv4"], "h1", h1["lab_ipv4"]) == 0

    # A live edit of the big map and the counters that survive it.
    block = {"bpfleet.core.blocklist": {"policy": NAME, "entries": [h2["lab_ipv4"]]}}
    blocked, block_s = timed(lab, [block])
    assert blocked["changed"] is True
    assert lab.udp_delivered("h2", h2["lab_ipv4"], "h1", h1["lab_ipv4"]) == 0
    facts = lab.playbook([{"bpfleet.core.bpfleet_facts": {}}], hosts="h1")["h1"][0]["ansible_facts"]["bpfleet"]
    assert facts["policies"][NAME]["counters"]["rules"]["deny"]["packets"] >= 30

    with capsys.disabled():
        print("\n[large lists] 1,000,000 IPv4 + 100,000 IPv6 prefixes, ansible-playbook wall time:"
              f"\n  first load {first_s:.1f} s, no-change re-run {again_s:.1f} s,"
              f" 1,000-entry delta {delta_s:.1f} s, blocklist one address {block_s:.1f} s")


def test_map_fill_alone(big, capsys):
    lab = big["lab"]
    report = json.loads(lab.exec("h1", "/usr/bin/python3", "-c", FILL_ALONE, str(COLLECTIONS), str(V4_COUNT)).stdout)
    assert report["read"] == V4_COUNT
    with capsys.disabled():
        print(f"\n[large lists] batch fill of 1,000,000 IPv4 prefixes {report['fill_s']:.2f} s, "
              f"batch read back {report['read_s']:.2f} s")


def pinned_map_ids(lab, host: str) -> dict:
    """{map pin name: kernel map id} for every map pinned under the policy's directory."""
    pins = lab.exec(host, "ls", f"/sys/fs/bpf/bpfleet/{NAME}/maps").stdout.split()
    ids = {}
    for pin in pins:
        shown = json.loads(lab.exec(host, "bpftool", "-j", "map", "show", "pinned",
                                    f"/sys/fs/bpf/bpfleet/{NAME}/maps/{pin}").stdout)
        ids[pin] = shown["id"]
    return ids


def test_policy_removal_frees_the_big_maps(big):
    lab = big["lab"]
    # The list maps (the agent may hold the ring buffer a little longer: not a list map).
    ids = {pin: map_id for pin, map_id in pinned_map_ids(lab, "h1").items()
           if pin in ("deny_v4", "deny_v6", "allow_v4", "allow_v6")}
    assert {"deny_v4", "deny_v6"} <= set(ids), ids
    removed = lab.playbook([{"bpfleet.core.policy": {"name": NAME, "state": "absent"}}], hosts="h1")["h1"][0]
    assert removed["changed"] is True
    assert xdp_prog_id(lab, "h1") is None
    assert lab.exec("h1", "test", "-e", f"/sys/fs/bpf/bpfleet/{NAME}", check=False).returncode == 1, \
        "the policy's pins are still there"
    # With the pins and the programs gone, the kernel frees the maps (after an RCU grace period):
    # their ids no longer resolve. Map ids are global, so any namespace can ask.
    deadline = time.monotonic() + 30
    alive = dict(ids)
    while alive and time.monotonic() < deadline:
        alive = {pin: map_id for pin, map_id in alive.items()
                 if lab.exec("h1", "bpftool", "map", "show", "id", str(map_id), check=False).returncode == 0}
        if alive:
            time.sleep(0.5)
    assert not alive, f"maps still alive after the policy was removed: {alive}"
