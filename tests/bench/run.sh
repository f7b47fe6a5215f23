#!/usr/bin/env bash
# Runs the bpfleet benchmarks (tests/bench/bench.py): `make bench` or `make bench-smoke`.
# Not part of the pass/fail suite. Needs root and the prepared machine (scripts/bootstrap.sh).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$repo/.tmp/collections"
if [ ! -e "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/bpfleet/core" ]; then
    mkdir -p "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/bpfleet"
    ln -sfn "$repo" "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/bpfleet/core"
fi
exec "$repo/.venv/bin/python" "$repo/tests/bench/bench.py" "$@"
