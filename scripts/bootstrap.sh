#!/usr/bin/env bash
# Idempotent setup of a development or CI machine (Debian 12, root) for bpfleet.core.
#
#   bash scripts/bootstrap.sh
#
# Steps (each prints one progress line; a step that is already done costs well under a second):
#   1. Debian packages  (apt-get update + install, only when something is missing)
#   2. controller venv  (.venv with the newest Python >= 3.12: ansible-core 2.21 needs it)
#   3. Python tools     (pip install -r requirements/controller.txt, only when it changed)
#   4. collection path  (.tmp/collections/ansible_collections/bpfleet/core -> repo root)
#   5. ansible-test     (offline get-pip stand-ins in ~/.ansible/test/cache, python3.X links)
#
# Kernel headers for BCC are NOT linked here: the bpfleet.core.host role does that on each
# managed host. This script only installs the Debian package they come from.
#
# Environment:
#   BPFLEET_SKIP_APT=1   skip step 1 (for machines where you manage packages yourself)
#   BPFLEET_PYTHON=/path use this interpreter for a new .venv (must be >= 3.12)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV="$REPO/.venv"
REQUIREMENTS="$REPO/requirements/controller.txt"
COLLECTION_LINK="$REPO/.tmp/collections/ansible_collections/bpfleet/core"
ANSIBLE_TEST_CACHE="$HOME/.ansible/test/cache"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"

# The one list of Debian packages the controller and the lab fleet need.
#   python3-bpfcc bpfcc-tools  BCC (only importable from /usr/bin/python3) and its tools
#   linux-headers-amd64        headers BCC compiles against (linked per host by the host role)
#   openssh-server/-client     sshd inside each test host, ssh from the controller
#   netcat-openbsd             SSH ProxyCommand into the lab's switch namespace
#   iproute2 ethtool bpftool   namespaces, veth, tc, GRO; inspecting programs and maps
#   python3-yaml python3-jinja2  modules run on the hosts' /usr/bin/python3
#   curl rsync git             tests (HTTP traffic), copies of the collection, clones
#   (ShellCheck)               needed by ansible-test's shellcheck sanity test: package shellcheck
#   nftables iputils-ping      tests count what passed a filter with nft counters; ICMP rules
#   chromium                   the fleet report test opens the HTML in headless Chromium
#   debootstrap systemd-container  the systemd Molecule scenario boots hosts with systemd-nspawn
#   prometheus-node-exporter logrotate  the agent's textfile metrics and SIGHUP reopen are tested with them
#   iptables ipset xdp-tools nginx wrk  the benchmarks' baselines and the HTTP load test (tests/bench)
#   rsyslog rsyslog-relp       the log shipping test: imfile + RELP between two lab hosts
#   gcc libc6-dev              the record layout test compiles bpf/include/bpfleet_record.h with cc;
#                              tests/fleet builds its packet generator (blast.c)
#   qemu-system-x86 qemu-utils mmdebstrap e2fsprogs  the kernel VM tests: Debian guest images, booted under TCG
# Under CI=true a test that skips fails (tests/conftest.py): whatever a test needs belongs here.
#   tcpdump                    the rewrite tests read VLAN tags and DSCP off the wire
APT_PACKAGES=(
  python3-bpfcc bpfcc-tools linux-headers-amd64
  openssh-server openssh-client netcat-openbsd
  iproute2 ethtool bpftool
  python3-yaml python3-jinja2
  curl rsync git
  shellcheck
  nftables iputils-ping chromium debootstrap systemd-container
  prometheus-node-exporter logrotate
  iptables ipset xdp-tools nginx wrk
  rsyslog rsyslog-relp
  gcc libc6-dev
  qemu-system-x86 qemu-utils mmdebstrap e2fsprogs
  tcpdump
)

STEP=0
TOTAL=5
step() { STEP=$((STEP + 1)); printf '==> bootstrap [%d/%d] %s\n' "$STEP" "$TOTAL" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
step "Debian packages"
if [[ "${BPFLEET_SKIP_APT:-0}" == 1 ]]; then
  info "skipped (BPFLEET_SKIP_APT=1)"
else
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    info "all ${#APT_PACKAGES[@]} packages installed"
  else
    [[ $(id -u) == 0 ]] || die "missing Debian packages (${missing[*]}) and not root: install them or run as root"
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: this script targets Debian 12"
    info "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages such as openssh-server start their daemon from the postinst script. The lab
    # starts its own sshd per test host; none should run in the root namespace. A
    # policy-rc.d that answers 101 ("action forbidden") stops that, and is removed after.
    # Docker-style base images already ship one, which is then left untouched.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\n# temporary, from bpfleet scripts/bootstrap.sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # A fresh machine's package lists may be empty or stale: always update before installing.
    apt-get update -q
    apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing[@]}"
    if [[ ! -e $policy ]] || grep -q 'from bpfleet scripts/bootstrap.sh' "$policy"; then
      rm -f "$policy"
      trap - EXIT
    fi
    for pkg in "${missing[@]}"; do
      status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
      [[ "$status" == "install ok installed" ]] || die "package $pkg is still not installed after apt-get install"
    done
    info "installed ${#missing[@]} package(s)"
  fi
fi

# ---------------------------------------------------------------------------------------
step "controller virtualenv (.venv, Python >= 3.12)"

# Prints "major.minor" when $1 runs and is >= 3.12, else fails. pyenv shims for versions that
# are not selected exist on PATH but fail when run, so every candidate is actually executed.
py_ok() {
  "$1" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 12); print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

find_python() {
  local cand
  if [[ -n "${BPFLEET_PYTHON:-}" ]]; then
    py_ok "$BPFLEET_PYTHON" >/dev/null || die "BPFLEET_PYTHON=$BPFLEET_PYTHON is not a working Python >= 3.12 with venv"
    echo "$BPFLEET_PYTHON"
    return
  fi
  # Newest pyenv-installed CPython >= 3.12 (plain X.Y.Z directories only, no dev/alpha builds).
  if [[ -d "$PYENV_ROOT/versions" ]]; then
    while read -r cand; do
      if py_ok "$PYENV_ROOT/versions/$cand/bin/python3" >/dev/null; then
        echo "$PYENV_ROOT/versions/$cand/bin/python3"
        return
      fi
    done < <(find "$PYENV_ROOT/versions" -mindepth 1 -maxdepth 1 -printf '%f\n' \
      | { grep -E '^3\.[0-9]+\.[0-9]+$' || true; } | sort -t. -k1,1nr -k2,2nr -k3,3nr)
  fi
  for cand in python3.14 python3.13 python3.12; do
    if command -v "$cand" >/dev/null && py_ok "$cand" >/dev/null; then
      command -v "$cand"
      return
    fi
  done
  die "no Python >= 3.12 found (looked in $PYENV_ROOT/versions and for python3.14/3.13/3.12 on PATH).
ansible-core 2.21 needs Python 3.12+ on the controller. Install one (e.g. 'pyenv install 3.12')
or point BPFLEET_PYTHON at it, then run this script again."
}

if [[ -x "$VENV/bin/python" ]] && venv_version=$(py_ok "$VENV/bin/python"); then
  info "exists: $VENV (Python $venv_version)"
else
  if [[ -e "$VENV" ]]; then
    info "$VENV is broken or older than Python 3.12: recreating it"
    rm -rf "$VENV"
  fi
  python=$(find_python)
  info "creating $VENV with $python ($("$python" -V 2>&1))"
  "$python" -m venv "$VENV"
fi

# ---------------------------------------------------------------------------------------
step "Python tools (requirements/controller.txt)"
[[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"
stamp="$VENV/.bpfleet-requirements.sha256"
want=$( (sha256sum "$REQUIREMENTS"; "$VENV/bin/python" -V) | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -m pip check >/dev/null 2>&1; then
  info "up to date"
else
  info "pip install -r ${REQUIREMENTS#"$REPO"/} (a few minutes on a fresh machine)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip check
  echo "$want" >"$stamp"
  info "installed: ansible-core $("$VENV/bin/python" -c 'import ansible.release as r; print(r.__version__)')"
fi

# ---------------------------------------------------------------------------------------
step "collection path"
# ANSIBLE_COLLECTIONS_PATH=$REPO/.tmp/collections makes bpfleet.core resolve to the working
# tree. (ansible-test resolves symlinks and needs a real directory: scripts/test.sh copies
# the tree for sanity instead.)
mkdir -p "$(dirname "$COLLECTION_LINK")"
if [[ -L "$COLLECTION_LINK" && "$(readlink "$COLLECTION_LINK")" == "$REPO" ]]; then
  info "exists: ${COLLECTION_LINK#"$REPO"/} -> $REPO"
else
  [[ -e "$COLLECTION_LINK" && ! -L "$COLLECTION_LINK" ]] && die "$COLLECTION_LINK exists and is not a symlink: remove it"
  ln -sfn "$REPO" "$COLLECTION_LINK"
  info "created: ${COLLECTION_LINK#"$REPO"/} -> $REPO"
fi

# ---------------------------------------------------------------------------------------
step "ansible-test offline support"
# ansible-test creates virtualenvs --without-pip and bootstraps pip in them by running
# get-pip.py downloaded from ci-files.testing.ansible.com, which this network cannot reach.
# It first looks for ~/.ansible/test/cache/get_pip_<version with _>.py (see
# ansible_test/_util/target/setup/requirements.py, bootstrap()). Our stand-in installs pip
# from the interpreter's bundled wheel (ensurepip), then pip-installs the requested
# packages (pip==<version>) from PyPI, which is reachable.
# The versions come from ansible-test's own get_venv_packages(), not from a copy here.
pip_versions=$("$VENV/bin/python" - <<'PY'
from ansible_test._internal import python_requirements as pr
# get_venv_packages() needs a PythonConfig only to look up per-version overrides.
class Py:  # minimal stand-in
    def __init__(self, version):
        self.version = version
versions = set()
for v in ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14"):
    versions.add(pr.get_venv_packages(Py(v))["pip"])
print(" ".join(sorted(versions)))
PY
) || die "could not read the pip version(s) ansible-test wants from its source"
mkdir -p "$ANSIBLE_TEST_CACHE"
for version in $pip_versions; do
  target="$ANSIBLE_TEST_CACHE/get_pip_${version//./_}.py"
  content=$(cat <<'PY'
# Offline stand-in for get-pip.py, written by bpfleet scripts/bootstrap.sh.
# ansible-test runs it as __main__ in a virtualenv made with --without-pip, passing pip
# install arguments ("pip==X.Y" and --no-setuptools/--no-wheel, which mean nothing here).
# pip comes from the interpreter's bundled wheel (ensurepip), then is upgraded to the
# requested version from the package index.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                      stdout=subprocess.DEVNULL)
if any(not a.startswith("-") for a in args):
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
)
  if [[ -f "$target" && "$(cat "$target")" == "$content" ]]; then
    info "exists: $target"
  else
    printf '%s\n' "$content" >"$target"
    info "written: $target"
  fi
done

# ansible-test finds other Pythons as python3.X on PATH. pyenv's shims for versions that are
# not selected fail when run, so link the real interpreters into .tmp/bin (scripts/test.sh
# puts it on PATH). Module code must stay valid on the hosts' Python 3.9+.
bindir="$REPO/.tmp/bin"
mkdir -p "$bindir"
linked=()
for minor in 9 10 11 12 13 14; do
  real=""
  if [[ -d "$PYENV_ROOT/versions" ]]; then
    real=$(find "$PYENV_ROOT/versions" -mindepth 1 -maxdepth 1 -name "3.$minor.*" -printf '%f\n' \
      | { grep -E "^3\.$minor\.[0-9]+$" || true; } | sort -t. -k3,3nr | head -1)
    [[ -n "$real" ]] && real="$PYENV_ROOT/versions/$real/bin/python3.$minor"
  fi
  [[ -z "$real" && -x /usr/bin/python3.$minor ]] && real=/usr/bin/python3.$minor
  if [[ -n "$real" && -x "$real" ]]; then
    [[ "$(readlink "$bindir/python3.$minor" 2>/dev/null)" == "$real" ]] || ln -sfn "$real" "$bindir/python3.$minor"
    linked+=("3.$minor")
  fi
done
info "python3.X links in .tmp/bin: ${linked[*]:-none}"

echo "==> bootstrap done"
