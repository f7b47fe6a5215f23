"""Print a policy's kernel counters as JSON; runs inside a lab host as /usr/bin/python3.

    hoststats.py COLLECTIONS_DIR POLICY_NAME

Reads the pinned per-CPU stats map the policy module created (the same code the facts
module uses), so the benchmarks count records emitted and lost exactly as the kernel did.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])
from ansible_collections.bpfleet.core.plugins.module_utils import _maps  # noqa: E402

counters = _maps.read_counters(sys.argv[2], {})
if counters is None:
    sys.exit("policy %s is not pinned on this host" % sys.argv[2])
counters.pop("interfaces", None)
counters.pop("rules", None)
print(json.dumps(counters))
