#!/usr/bin/env bash
# The demo: set up this machine, bring up a local lab fleet of 3 hosts (network + mount
# namespaces with their own sshd), roll out playbooks/policies/lab-edge.yml with the
# bpfleet.core.host role and the bpfleet.core.policy module over SSH, send allowed and
# denied traffic, and print the facts and the last header records.
#
#   bash scripts/demo.sh          # set up, fleet up, roll out, traffic, report
#   bash scripts/demo.sh down     # remove the demo fleet
#
# The fleet stays up afterwards so you can look around:
#   .venv/bin/ansible -i .tmp/demo/inventory.yml all -m bpfleet.core.bpfleet_facts
#   python3 tests/fleet/bpfleet_lab.py exec --name demo --host h1 -- tail -f /var/log/bpfleet/headers.jsonl
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
INVENTORY="$REPO/.tmp/demo/inventory.yml"
cd "$REPO"

if [[ "${1:-}" == down ]]; then
  exec python3 tests/fleet/bpfleet_lab.py down --name demo
fi

[[ $EUID -eq 0 ]] || { echo "demo: run as root (the lab fleet creates namespaces)" >&2; exit 1; }

echo "==> demo [1/3] setting up this machine (apt, venv, collection path)"
bash scripts/bootstrap.sh

echo "==> demo [2/3] bringing up the lab fleet (3 hosts)"
mkdir -p "$(dirname "$INVENTORY")"
python3 tests/fleet/bpfleet_lab.py up --name demo --hosts 3 --inventory "$INVENTORY"

echo "==> demo [3/3] rolling out the lab policy, sending traffic, reporting"
export PATH="$REPO/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$REPO/.tmp/collections"
ansible-playbook -i "$INVENTORY" playbooks/demo.yml

cat <<EOT

The demo fleet is still up. Look around:
  .venv/bin/ansible -i $INVENTORY all -m bpfleet.core.bpfleet_facts
  python3 tests/fleet/bpfleet_lab.py exec --name demo --host h1 -- tail -n 20 /var/log/bpfleet/headers.jsonl
Remove it with:
  bash scripts/demo.sh down
EOT
