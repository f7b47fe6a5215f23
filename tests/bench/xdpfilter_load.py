"""Fill xdp-filter's pinned IPv4 map in one BPF_MAP_UPDATE_BATCH; runs inside a lab host.

    xdpfilter_load.py COLLECTIONS_DIR MAP_PIN VALUE_HEX ADDRESS_FILE

xdp-filter has no batch command (one CLI run per address); this writes, for every address in
ADDRESS_FILE, the per-CPU value its own CLI wrote for the first address (VALUE_HEX, one CPU's
8 bytes), and prints how many entries the map holds afterwards.
"""

import socket
import sys

sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfleet.core.plugins.module_utils import _bpf_syscall as bpf  # noqa: E402

value = bytes.fromhex(sys.argv[3]) * bpf.possible_cpus()
with open(sys.argv[4]) as handle:
    keys = [socket.inet_aton(line.strip()) for line in handle if line.strip()]
fd = bpf.obj_get(sys.argv[2])
try:
    bpf.map_update_batch(fd, keys, [value] * len(keys))
    print(sum(1 for _key in bpf.map_keys(fd, 4)))
finally:
    bpf.close_fd(fd)
