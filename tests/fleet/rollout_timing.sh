#!/usr/bin/env bash
# Rollout time to 3, 10 and 20 lab hosts (issue 6): a first rollout of playbooks/policies/lab-edge.yml
# (every host compiles) and a re-run with no change (no host may compile). Not part of the suite.
#
#   bash tests/fleet/rollout_timing.sh                  # 20 hosts, counts 3 10 20, forks 20
#   FORKS=10 THROTTLE=4 COUNTS="20" bash tests/fleet/rollout_timing.sh
#
# Needs root, the venv on PATH and ANSIBLE_COLLECTIONS_PATH (docs/development.md). The fleet
# (name rtime) is brought up once with the host role and torn down at the end.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
NAME=${NAME:-rtime}
HOSTS=${HOSTS:-20}
COUNTS=${COUNTS:-"3 10 20"}
FORKS=${FORKS:-20}
THROTTLE=${THROTTLE:-0}
SERIAL=${SERIAL:-'[1, "25%", "100%"]'}
WORK=/tmp/bpfleet-lab/$NAME
INV=$WORK/inventory.yml
POLICY=$REPO/playbooks/policies/lab-edge.yml
export ANSIBLE_HOST_KEY_CHECKING=false ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_FORKS=$FORKS

python3 "$REPO/tests/fleet/bpfleet_lab.py" up --name "$NAME" --hosts "$HOSTS" --inventory "$INV" >/dev/null
trap 'python3 "$REPO/tests/fleet/bpfleet_lab.py" down --name "$NAME" >/dev/null' EXIT
cat > "$WORK/prepare.yml" <<PLAY
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: bpfleet.core.host}
PLAY
ansible-playbook -i "$INV" "$WORK/prepare.yml" >/dev/null
cat > "$WORK/remove.yml" <<PLAY
- hosts: all
  gather_facts: false
  tasks:
    - bpfleet.core.policy: {name: lab-edge, state: absent}
PLAY

rollout() {  # $1 host count, $2 label
  local start end
  start=$(date +%s.%N)
  ansible-playbook -i "$INV" "$REPO/playbooks/rollout.yml" -e rollout_policy="$POLICY" \
    -e "rollout_hosts=bpfleet_lab[0:$(($1 - 1))]" -e rollout_canary=h1 -e "{\"rollout_serial\": $SERIAL}" \
    -e rollout_compile_throttle="$THROTTLE" -e rollout_summary_file="$WORK/summary-$1-$2.json" >"$WORK/rollout-$1-$2.log"
  end=$(date +%s.%N)
  python3 - "$WORK/summary-$1-$2.json" "$1" "$2" "$(echo "$end - $start" | bc)" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
hosts, label, seconds = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
compiled = sum(1 for h in summary.values() if h["compiled"])
changed = sum(1 for h in summary.values() if h["changed"])
healthy = sum(1 for h in summary.values() if h["healthy"])
assert len(summary) == hosts and healthy == hosts, summary
if label == "rerun":
    assert compiled == 0 and changed == 0, "a re-run with no change compiled or changed something"
print(f"{hosts:>3} hosts  {label:<6} {seconds:6.1f} s  changed {changed:>2}  compiled {compiled:>2}  healthy {healthy:>2}")
PY
}

echo "forks $FORKS, compile throttle $THROTTLE, serial after the canary $SERIAL, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $COUNTS; do
  ansible-playbook -i "$INV" "$WORK/remove.yml" >/dev/null
  rollout "$n" first
  rollout "$n" rerun
done
