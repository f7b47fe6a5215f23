#!/usr/bin/env bash
# The collection's place in the Ansible ecosystem, built from this tree (docs/awx.md, docs/site/):
#
#   bash scripts/ecosystem.sh ee      # execution environment build context -> .tmp/ee/context
#   bash scripts/ecosystem.sh docs    # antsibull-docs + Sphinx site        -> .tmp/docs-site/html
#   bash scripts/ecosystem.sh         # both
#
# BPFLEET_DOCS_DIR (default docs/) and BPFLEET_DOCS_SITE (default .tmp/docs-site) move the
# guides read and the site written (tests/integration/test_ecosystem.py uses them).
#
# The tools (ansible-builder, antsibull-docs, Sphinx, MyST) are pinned in
# requirements/ecosystem.txt and installed from PyPI into their own venv, .tmp/venv-eco, so
# their dependencies never meet the controller venv's (ansible-lint, Molecule). That venv is
# made once and reused while the requirements file is unchanged. The docs build fails on any
# antsibull-docs error and on any Sphinx warning (-W). No container engine is needed: the
# EE image itself is built elsewhere from the context (docs/awx.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TMP="$REPO/.tmp"
VENV="$TMP/venv-eco"
REQUIREMENTS="$REPO/requirements/ecosystem.txt"
# Where the docs step reads the Markdown guides and writes the site (tests point them elsewhere).
DOCS_DIR=${BPFLEET_DOCS_DIR:-$REPO/docs}
SITE_DIR=${BPFLEET_DOCS_SITE:-$TMP/docs-site}

info() { printf '    %s\n' "$*"; }
die() { printf 'ecosystem: ERROR: %s\n' "$*" >&2; exit 1; }

tools_venv() {
  # Same interpreter as the controller venv (Python >= 3.12, made by scripts/bootstrap.sh).
  local base stamp want
  [[ -x "$REPO/.venv/bin/python" ]] || die "no .venv: run scripts/bootstrap.sh first"
  base=$("$REPO/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
  stamp="$VENV/.bpfleet-requirements.sha256"
  want=$( (sha256sum "$REQUIREMENTS"; "$base" -V) | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    info "tools venv up to date: ${VENV#"$REPO"/}"
    return
  fi
  rm -rf "$VENV"
  info "creating ${VENV#"$REPO"/} with $base, pip install -r ${REQUIREMENTS#"$REPO"/}"
  "$base" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip check
  echo "$want" >"$stamp"
}

build_ee() {
  local out="$TMP/ee" tarball installed
  echo "==> ecosystem: execution environment build context"
  rm -rf "$out"
  mkdir -p "$out"
  cp "$REPO/ee/execution-environment.yml" "$REPO/ee/requirements.yml" "$out/"
  "$VENV/bin/ansible-galaxy" collection build "$REPO" --output-path "$out" --force
  tarball=$(find "$out" -maxdepth 1 -name 'bpfleet-core-*.tar.gz' -print -quit)
  [[ -n "$tarball" ]] || die "ansible-galaxy built no bpfleet-core-*.tar.gz"
  (cd "$out" && "$VENV/bin/ansible-builder" create --file execution-environment.yml --context context \
    --output-filename Containerfile -v 2)
  [[ -f "$out/context/Containerfile" ]] || die "ansible-builder wrote no Containerfile"
  # What the image build's introspection stage will find in the installed collection: run the
  # very script ansible-builder put into the context against the tarball installed here.
  installed="$out/installed"
  ANSIBLE_COLLECTIONS_PATH="$installed" "$VENV/bin/ansible-galaxy" collection install -p "$installed" "$tarball" >/dev/null
  "$VENV/bin/python" "$out/context/_build/scripts/introspect.py" introspect "$installed" \
    --write-pip "$out/introspect-requirements.txt" --write-bindep "$out/introspect-bindep.txt"
  info "build context: ${out#"$REPO"/}/context (Containerfile, _build/)"
}

build_docs() {
  local site="$SITE_DIR"
  echo "==> ecosystem: docs site (antsibull-docs, Sphinx -W)"
  rm -rf "$site"
  # antsibull-docs wants its destination owned by the user and writable by nobody else.
  mkdir -p "$site/rst/guides"
  chmod 0755 "$site" "$site/rst" "$site/rst/guides"
  cp "$REPO/docs/site/conf.py" "$REPO/docs/site/antsibull-docs.cfg" "$site/"
  cp "$REPO/docs/site/index.rst" "$site/rst/"
  # The collection as ansible-doc sees it: this tree through the collection-path symlink.
  PATH="$VENV/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$TMP/collections" "$VENV/bin/antsibull-docs" \
    --config-file "$site/antsibull-docs.cfg" collection \
    --use-current --fail-on-error --cleanup everything --dest-dir "$site/rst" bpfleet.core
  # The guides (Markdown, read by MyST) and the images they show.
  cp "$DOCS_DIR"/*.md "$site/rst/guides/"
  cp -r "$DOCS_DIR/images" "$DOCS_DIR/img" "$DOCS_DIR/policy.schema.json" "$site/rst/guides/"
  # Guides link to a few files of the tree (../playbooks/policies/...): the same relative
  # place in the site, so the links resolve (as downloads).
  mkdir -p "$site/rst/playbooks"
  cp -r "$REPO/playbooks/policies" "$site/rst/playbooks/"
  PATH="$VENV/bin:$PATH" "$VENV/bin/sphinx-build" -b html -c "$site" -W --keep-going -q \
    "$site/rst" "$site/html"
  info "site: $site/html/index.html"
}

what=${1:-all}
case $what in
  ee | docs | all) ;;
  *) die "unknown target '$what' (ee, docs or all)" ;;
esac
tools_venv
[[ $what == docs ]] || build_ee
[[ $what == ee ]] || build_docs
echo "==> ecosystem: done"
