"""The collection in the Ansible ecosystem: the execution environment build context and the docs site.

Runs `bash scripts/ecosystem.sh` exactly as a developer or CI would: ansible-builder and
antsibull-docs come from PyPI (pinned in requirements/ecosystem.txt) into their own venv under
.tmp/. Controller only: no root, no lab fleet, no container engine (the image itself is not
built here; docs/awx.md says what is checked).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ecosystem.sh"
EE = REPO / ".tmp" / "ee"
SITE = REPO / ".tmp" / "docs-site"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def ecosystem(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=dict(os.environ, **(env or {})),
                            capture_output=True, text=True, timeout=1200, check=False)
    result.output = result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def built() -> subprocess.CompletedProcess:
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv: run scripts/bootstrap.sh")
    result = ecosystem("all")
    assert result.returncode == 0, result.output[-6000:]
    return result


def galaxy_version() -> str:
    return yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]


def test_ee_build_context(built):
    context = EE / "context"
    containerfile = (context / "Containerfile").read_text()
    # What ee/execution-environment.yml asks for reaches the Containerfile.
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==2.21.5 ansible-runner==' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.12"' in containerfile
    assert "introspect.py introspect" in containerfile
    assert "install-from-bindep" in containerfile
    tarball = context / "_build" / "collections" / f"bpfleet-core-{galaxy_version()}.tar.gz"
    assert tarball.is_file() and tarball.stat().st_size > 10_000
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": f"/build/collections/{tarball.name}", "type": "file"}]
    for script in ("assemble", "install-from-bindep", "introspect.py", "check_galaxy", "entrypoint"):
        assert (context / "_build" / "scripts" / script).is_file(), script


def test_ee_introspection_finds_the_collection_requirements(built):
    """ansible-builder's own introspect.py, run on the built tarball installed, finds bindep.txt and
    requirements/collection.txt through meta/execution-environment.yml."""
    bindep = (EE / "introspect-bindep.txt").read_text().splitlines()
    pip = (EE / "introspect-requirements.txt").read_text().splitlines()
    assert "openssh-clients [platform:rpm]  # from collection bpfleet.core" in bindep
    assert "openssh-client [platform:dpkg]  # from collection bpfleet.core" in bindep
    # PyYAML is on introspect.py's exclude list (ansible-core brings it); Jinja2 is not.
    assert "Jinja2>=3.0  # from collection bpfleet.core" in pip
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    assert (REPO / meta["dependencies"]["python"]).is_file()
    assert (REPO / meta["dependencies"]["system"]).is_file()


def test_docs_site_has_every_plugin_role_and_guide(built):
    html = SITE / "html"
    pages = {p.relative_to(html).as_posix() for p in html.rglob("*.html")}
    core = "collections/bpfleet/core/"
    modules = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if not p.stem.startswith("_"))
    filters = [yaml.safe_load(p.read_text())["DOCUMENTATION"]["name"]
               for p in (REPO / "plugins" / "filter").glob("*.yml")]
    roles = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())
    assert modules and roles
    expected = ({f"{core}{m}_module.html" for m in modules} | {f"{core}{r}_role.html" for r in roles}
                | {f"{core}{f}_filter.html" for f in filters}
                | {f"guides/{p.stem}.html" for p in (REPO / "docs").glob("*.md")})
    assert expected - pages == set()
    assert f"{core}policy_validate_filter.html" in pages
    policy = (html / core / "policy_module.html").read_text()
    assert "Parameters" in policy and "Return Values" in policy and "Examples" in policy
    # A role's page is made from meta/argument_specs.yml.
    assert "bpfleet_host_agent_enabled" in (html / core / "host_role.html").read_text()
    assert "Built with" not in (html / "index.html").read_text()  # html_show_sphinx = False: our conf.py


def test_docs_build_fails_on_a_doc_error(built, tmp_path):
    """A guide with a broken link fails the build (Sphinx -W): the site is never published with one."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    (docs / "broken.md").write_text("# Broken\n\nSee [the missing guide](missing-guide.md).\n")
    site = tmp_path / "site"
    result = ecosystem("docs", env={"BPFLEET_DOCS_DIR": str(docs), "BPFLEET_DOCS_SITE": str(site)})
    assert result.returncode != 0, result.output[-3000:]
    assert "broken.md" in result.output and "missing-guide.md" in result.output, result.output[-3000:]


def awx_playbooks() -> dict[str, str]:
    """The playbooks docs/awx.md shows: YAML blocks that start with `# playbooks/<file> ...`."""
    text = (REPO / "docs" / "awx.md").read_text()
    blocks = {}
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S):
        first = block.splitlines()[0]
        if first.startswith("# playbooks/"):
            blocks[first.split()[1]] = block
    return blocks


def test_awx_doc_playbooks_pass_syntax_check(tmp_path):
    playbooks = awx_playbooks()
    assert set(playbooks) == {"playbooks/rollout.yml", "playbooks/report.yml", "playbooks/apply-pending.yml",
                              "playbooks/confirm.yml"}
    collections = tmp_path / "collections"
    (collections / "ansible_collections" / "bpfleet").mkdir(parents=True)
    (collections / "ansible_collections" / "bpfleet" / "core").symlink_to(REPO)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    for name, text in playbooks.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        result = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                                 str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
