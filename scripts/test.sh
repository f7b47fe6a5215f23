#!/usr/bin/env bash
# THE test command of bpfleet.core (README and .ci/run call exactly this).
#
#   bash scripts/test.sh
#   BPFLEET_TEST_STAGES="ruff unit" bash scripts/test.sh     # a subset, in the usual order
#
# Runs scripts/bootstrap.sh, then these stages in order; every selected stage runs even when
# an earlier one failed, and the exit status is non-zero when any of them failed:
#
#   ruff         ruff check .                             (pyproject.toml)
#   lint         ansible-lint, profile production         (.ansible-lint, .yamllint)
#   sanity       ansible-test sanity --local, on a copy of the tree under
#                .tmp/sanity/ansible_collections/bpfleet/core
#   host         playbooks/host_local.yml: the bpfleet.core.host role on this machine
#                (BCC and kernel headers, which the kernel tests in tests/unit need)
#   unit         pytest tests/unit -q                     (no tests collected = failure)
#   integration  pytest tests/fleet tests/integration -m integration -q
#                (missing directories are skipped; no tests collected = skipped)
#   molecule     molecule test -s S for each scenario S in MOLECULE_SCENARIOS below
#
# Ends with a table of stages (PASS/FAIL/SKIP, seconds) and the line
# "stages: N passed, M failed, K skipped".
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO" || exit 1

ALL_STAGES=(ruff lint sanity host unit integration molecule)
read -r -a REQUESTED <<<"${BPFLEET_TEST_STAGES:-${ALL_STAGES[*]}}"
for s in "${REQUESTED[@]}"; do
  if [[ " ${ALL_STAGES[*]} " != *" $s "* ]]; then
    echo "test.sh: unknown stage '$s' in BPFLEET_TEST_STAGES (known: ${ALL_STAGES[*]})" >&2
    exit 2
  fi
done
((${#REQUESTED[@]} > 0)) || { echo "test.sh: BPFLEET_TEST_STAGES selects no stage" >&2; exit 2; }

# Output is read in CI logs and through pipes: no color escapes unless on a terminal.
if [[ ! -t 1 ]]; then
  export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0
fi

NAMES=() RESULTS=() SECONDS_TAKEN=() NOTES=()
START_ALL=$EPOCHREALTIME

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# run_stage NAME DESCRIPTION FUNCTION: the function returns 0 (pass), 1 (fail) or 3 (skip)
# and may set NOTE to a short reason shown in the summary.
run_stage() {
  local name=$1 desc=$2 fn=$3 start rc result
  NOTE=""
  printf '\n%s\n' "================================================================================"
  printf '== %s: %s\n' "$name" "$desc"
  printf '%s\n' "================================================================================"
  start=$EPOCHREALTIME
  "$fn" </dev/null
  rc=$?
  case $rc in
    0) result=PASS ;;
    3) result=SKIP ;;
    *) result=FAIL ;;
  esac
  local took
  took=$(elapsed "$start")
  printf -- '-- %s: %s in %s s%s\n' "$name" "$result" "$took" "${NOTE:+ ($NOTE)}"
  NAMES+=("$name") RESULTS+=("$result") SECONDS_TAKEN+=("$took") NOTES+=("$NOTE")
}

summary() {
  local i passed=0 failed=0 skipped=0
  printf '\n%s\n' "================================================================================"
  printf '%-12s %-6s %9s  %s\n' STAGE RESULT SECONDS NOTE
  for i in "${!NAMES[@]}"; do
    printf '%-12s %-6s %9s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}" "${NOTES[$i]}"
    case ${RESULTS[$i]} in
      PASS) passed=$((passed + 1)) ;;
      FAIL) failed=$((failed + 1)) ;;
      SKIP) skipped=$((skipped + 1)) ;;
    esac
  done
  printf '%-12s %-6s %9s\n' total "" "$(elapsed "$START_ALL")"
  printf '%s\n' "================================================================================"
  echo "stages: $passed passed, $failed failed, $skipped skipped"
  ((failed == 0))
}

# --- bootstrap ---------------------------------------------------------------------------
stage_bootstrap() {
  bash "$REPO/scripts/bootstrap.sh"
}
run_stage bootstrap "scripts/bootstrap.sh" stage_bootstrap
if [[ ${RESULTS[0]} != PASS ]]; then
  echo "test.sh: bootstrap failed: no stage can run without the tools (see the error above)" >&2
  summary
  exit 1
fi

# Tools from the venv first (molecule and ansible-lint need its bin on PATH), then real
# python3.X interpreters for ansible-test (pyenv shims of unselected versions fail).
export PATH="$REPO/.venv/bin:$REPO/.tmp/bin:$PATH"
# bpfleet.core resolves to this working tree (symlink made by bootstrap).
export ANSIBLE_COLLECTIONS_PATH="$REPO/.tmp/collections"

# --- stages ------------------------------------------------------------------------------
stage_ruff() {
  ruff --version
  ruff check .
}

stage_lint() {
  ansible-lint --version
  # Profile and exclusions come from .ansible-lint.
  ansible-lint
}

SANITY_ROOT="$REPO/.tmp/sanity/ansible_collections/bpfleet/core"
stage_sanity() {
  # ansible-test needs the collection at .../ansible_collections/bpfleet/core and resolves
  # symlinks, so the collection-path symlink does not do: test a copy of the files git
  # would commit (tracked plus untracked-but-not-ignored, minus deleted ones).
  rm -rf "$SANITY_ROOT" && mkdir -p "$SANITY_ROOT" || return 1
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | grep -zvE '^(\.venv|\.tmp|\.git|tests/output)(/|$)' \
    | while IFS= read -r -d '' f; do [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"; done \
    | rsync -a --from0 --files-from=- "$REPO/" "$SANITY_ROOT/" || { echo "copy to $SANITY_ROOT failed"; return 1; }
  # Without a repository of its own, ansible-test would walk up to $REPO's .git, where
  # .tmp/ is ignored, and find no files at all ("All targets skipped").
  git -C "$SANITY_ROOT" init -q || return 1
  echo "copied $(git -C "$SANITY_ROOT" ls-files --others | wc -l) files to ${SANITY_ROOT#"$REPO"/}"
  ansible-test --version
  # --local: run in this venv, no containers. No --python: compile and import run on every
  # supported Python found (3.9-3.14; .tmp/bin has the pyenv ones), since module code runs
  # on the hosts' Python 3.9+; versions not installed are skipped with a warning.
  # Each test that has requirements gets a virtualenv under ~/.ansible/test/venv, created
  # --without-pip; pip comes from the offline get-pip stand-in bootstrap.sh wrote, and the
  # pinned test requirements from PyPI (the only index reachable). No test is skipped.
  (cd "$SANITY_ROOT" && ansible-test sanity --local)
}

stage_host() {
  # The kernel tests in tests/unit compile with BCC, which needs kernel headers: prepare
  # this machine with the collection's own host role, as an operator would prepare a host.
  ansible-playbook -i localhost, -c local playbooks/host_local.yml
}

stage_unit() {
  if [[ ! -d tests/unit ]]; then
    NOTE="tests/unit does not exist"
    echo "FAIL: $NOTE: there must be unit tests"
    return 1
  fi
  local rc
  pytest tests/unit -q --durations=8
  rc=$?
  if ((rc == 5)); then
    NOTE="no unit tests collected"
    echo "FAIL: $NOTE"
    return 1
  fi
  return $rc
}

stage_integration() {
  local dirs=() d rc
  for d in tests/fleet tests/integration; do
    if [[ -d $d ]]; then
      dirs+=("$d")
    else
      echo "skip: $d does not exist (yet)"
    fi
  done
  if ((${#dirs[@]} == 0)); then
    NOTE="no tests/fleet or tests/integration"
    return 3
  fi
  pytest "${dirs[@]}" -m integration -q --durations=25
  rc=$?
  if ((rc == 5)); then
    NOTE="no integration tests collected in ${dirs[*]}"
    echo "skip: $NOTE"
    return 3
  fi
  return $rc
}

# Molecule scenarios run in this order; each one brings up and destroys its own fleet.
#   BPFLEET_MOLECULE_SCENARIOS="default" bash scripts/test.sh    # a subset
MOLECULE_SCENARIOS=(default systemd rollout)
stage_molecule() {
  local scenarios=() s failed=0
  read -r -a scenarios <<<"${BPFLEET_MOLECULE_SCENARIOS:-${MOLECULE_SCENARIOS[*]}}"
  if [[ ! -f extensions/molecule/default/molecule.yml ]]; then
    NOTE="no extensions/molecule/default/molecule.yml"
    echo "FAIL: $NOTE: there must be a Molecule scenario"
    return 1
  fi
  molecule --version
  for s in "${scenarios[@]}"; do
    if [[ ! -f extensions/molecule/$s/molecule.yml ]]; then
      echo "FAIL: no Molecule scenario extensions/molecule/$s"
      failed=1
      continue
    fi
    printf -- '-- molecule scenario %s\n' "$s"
    # Molecule 26 finds scenarios of a collection under extensions/molecule/ when run from
    # the collection root (the directory with galaxy.yml).
    if ! molecule test -s "$s"; then
      echo "FAIL: molecule scenario $s"
      failed=1
    fi
  done
  NOTE="scenarios: ${scenarios[*]}"
  return $failed
}

declare -A DESCRIPTIONS=(
  [ruff]="ruff check ."
  [lint]="ansible-lint (profile production)"
  [sanity]="ansible-test sanity --local"
  [host]="bpfleet.core.host role on this machine (BCC, kernel headers)"
  [unit]="pytest tests/unit -q"
  [integration]="pytest tests/fleet tests/integration -m integration -q"
  [molecule]="molecule test, each scenario of extensions/molecule in turn"
)

for s in "${ALL_STAGES[@]}"; do
  if [[ " ${REQUESTED[*]} " == *" $s "* ]]; then
    run_stage "$s" "${DESCRIPTIONS[$s]}" "stage_$s"
  fi
done

summary
