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
#   molecule     molecule test -s S for each scenario S in MOLECULE_SCENARIOS below
#   mutation     tests/mutation/run.py: break each guarantee on purpose (a header not redacted,
#                the deny lookup skipped, the agent's cursor not written, the lockout check
#                skipped...) and fail unless a targeted test fails for every mutant
#
# Ends with a table of stages (PASS/FAIL/SKIP, seconds) and the line
# "stages: N passed, M failed, K skipped".
#
# What passes (docs/development.md):
#   - A stage passes only when its command exits 0. Any other exit status fails it, 3 too
#     (pytest's internal error, ansible-lint's bad config, ansible-playbook's unreachable host).
#   - Outside CI a stage that had nothing to run (integration: no directory, no test
#     collected) is SKIP, and pytest stages count their skipped tests in the NOTE column.
#   - Under CI=true (.ci/run) a stage that ran nothing fails, and a skipped test fails its
#     stage with the skip reason printed (tests/conftest.py; a test marked ci_may_skip may
#     skip), BPFLEET_UPDATE_GOLDEN is refused (it would rewrite the golden files and pass),
#     and an empty scenario list fails the molecule stage.
#
# Environment (.ci/run fixes all of them):
#   BPFLEET_TEST_STAGES         the stages to run (default: all)
#   BPFLEET_MOLECULE_SCENARIOS  the Molecule scenarios (default: default systemd rollout)
#   BPFLEET_HOST_STAGE_INVENTORY  an inventory for the host stage instead of this machine
#                               (tests/unit/test_ci_semantics.py makes a host unreachable with it)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO" || exit 1

ALL_STAGES=(ruff lint sanity host unit integration molecule mutation)
read -r -a REQUESTED <<<"${BPFLEET_TEST_STAGES:-${ALL_STAGES[*]}}"
for s in "${REQUESTED[@]}"; do
  if [[ " ${ALL_STAGES[*]} " != *" $s "* ]]; then
    echo "test.sh: unknown stage '$s' in BPFLEET_TEST_STAGES (known: ${ALL_STAGES[*]})" >&2
    exit 2
  fi
done
((${#REQUESTED[@]} > 0)) || { echo "test.sh: BPFLEET_TEST_STAGES selects no stage" >&2; exit 2; }

CI_MODE=0
case ${CI:-} in 1 | true | TRUE | True | yes) CI_MODE=1 ;; esac
if ((CI_MODE)); then
  if [[ -n ${BPFLEET_UPDATE_GOLDEN:-} && ${BPFLEET_UPDATE_GOLDEN} != 0 ]]; then
    echo "test.sh: CI=true with BPFLEET_UPDATE_GOLDEN=$BPFLEET_UPDATE_GOLDEN: refused (it rewrites the golden" \
      "files and passes, so nothing is compared)" >&2
    exit 2
  fi
  echo "test.sh: CI=true: a stage passes only if it ran its tests; skipped tests fail (tests/conftest.py)"
fi
# Where the pytest stages keep their output (the summary counts skipped tests from it).
LOGS="$REPO/.tmp/test-logs"
mkdir -p "$LOGS"

# Output is read in CI logs and through pipes: no color escapes unless on a terminal.
if [[ ! -t 1 ]]; then
  export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0
fi

NAMES=() RESULTS=() SECONDS_TAKEN=() NOTES=()
START_ALL=$EPOCHREALTIME

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# run_stage NAME DESCRIPTION FUNCTION: the function's exit status decides: 0 passes, anything
# else fails. A function that had nothing to run calls skip_stage (outside CI only) and
# returns 0. It may set NOTE to a short reason shown in the summary.
STAGE_SKIPPED=0
skip_stage() {
  NOTE=$1
  if ((CI_MODE)); then
    echo "FAIL: $NOTE (CI=true: a stage that runs nothing fails)"
    return 1
  fi
  echo "SKIP: $NOTE"
  STAGE_SKIPPED=1
  return 0
}

# pytest_stage NAME ARGS...: pytest with its output also in $LOGS/NAME.log; adds the count of
# skipped tests to NOTE. Returns pytest's exit status (5 = no tests collected).
pytest_stage() {
  local name=$1 rc last skipped
  shift
  pytest "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  last=$(grep -E '^=* ?[0-9]+ [a-z]+.* in [0-9.]+s' "$LOGS/$name.log" | tail -1)
  skipped=$(grep -oE '[0-9]+ skipped' <<<"$last" | cut -d' ' -f1)
  if [[ -n $skipped && $skipped != 0 ]]; then
    NOTE="$skipped test(s) SKIPPED"
  fi
  return "$rc"
}

run_stage() {
  local name=$1 desc=$2 fn=$3 start rc result
  NOTE="" STAGE_SKIPPED=0
  printf '\n%s\n' "================================================================================"
  printf '== %s: %s\n' "$name" "$desc"
  printf '%s\n' "================================================================================"
  start=$EPOCHREALTIME
  "$fn" </dev/null
  rc=$?
  if ((rc != 0)); then
    result=FAIL
    [[ -n $NOTE ]] || NOTE="exit status $rc"
  elif ((STAGE_SKIPPED)); then
    result=SKIP
  else
    result=PASS
  fi
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
  # An unreachable host makes ansible-playbook exit 3, which fails the stage like any other
  # non-zero status (tests/unit/test_ci_semantics.py checks it with BPFLEET_HOST_STAGE_INVENTORY).
  if [[ -n ${BPFLEET_HOST_STAGE_INVENTORY:-} ]]; then
    ansible-playbook -i "$BPFLEET_HOST_STAGE_INVENTORY" playbooks/host_local.yml
  else
    ansible-playbook -i localhost, -c local playbooks/host_local.yml
  fi
}

stage_unit() {
  if [[ ! -d tests/unit ]]; then
    NOTE="tests/unit does not exist"
    echo "FAIL: $NOTE: there must be unit tests"
    return 1
  fi
  local rc
  pytest_stage unit tests/unit -q --durations=8
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
    skip_stage "no tests/fleet or tests/integration"
    return
  fi
  pytest_stage integration "${dirs[@]}" -m integration -q --durations=25
  rc=$?
  if ((rc == 5)); then
    skip_stage "no integration tests collected in ${dirs[*]}"
    return
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
  if ((${#scenarios[@]} == 0)); then
    NOTE="BPFLEET_MOLECULE_SCENARIOS selects no scenario"
    echo "FAIL: $NOTE"
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

stage_mutation() {
  # Needs what the kernel tests need (root, BCC, the headers the host stage linked) and the lab.
  python tests/mutation/run.py
}

declare -A DESCRIPTIONS=(
  [ruff]="ruff check ."
  [lint]="ansible-lint (profile production)"
  [sanity]="ansible-test sanity --local"
  [host]="bpfleet.core.host role on this machine (BCC, kernel headers)"
  [unit]="pytest tests/unit -q"
  [integration]="pytest tests/fleet tests/integration -m integration -q"
  [molecule]="molecule test, each scenario of extensions/molecule in turn"
  [mutation]="tests/mutation/run.py: every mutant must be killed by a targeted test"
)

for s in "${ALL_STAGES[@]}"; do
  if [[ " ${REQUESTED[*]} " == *" $s "* ]]; then
    run_stage "$s" "${DESCRIPTIONS[$s]}" "stage_$s"
  fi
done

summary
