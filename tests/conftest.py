# Copyright (c) bpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Skip semantics of every test under tests/ (unit, integration, fleet, kernels).

Outside CI a test may skip (no root, no BCC, no kernel headers...): pytest lists each skip
and its reason at the end (`-ra` in pyproject.toml), and scripts/test.sh counts them in its
summary.

Under CI=true (as .ci/run sets it) a skip is a failure: CI runs on a machine that
scripts/bootstrap.sh and the host stage prepared, so a kernel or fleet test that skips there
did not test anything, and a green run must not hide that. The report shows the skip reason:

    FAILED ...::test_x - CI=true: this test skipped instead of running: no kernel headers ...

A test that may legitimately skip in CI says so, with the reason, and is then reported as an
ordinary skip:

    @pytest.mark.ci_may_skip("only meaningful on a kernel without BTF")

Expected failures (xfail) are not skips and are left alone.
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ci_may_skip(reason): this test may skip under CI=true (otherwise a skip there is a failure)")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, reason = longrepr
        return "%s (%s:%s)" % (str(reason).removeprefix("Skipped: "), path, lineno)
    return str(longrepr)


def _may_skip(node) -> bool:
    return node is not None and node.get_closest_marker("ci_may_skip") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not CI or not report.skipped or hasattr(report, "wasxfail") or _may_skip(item):
        return
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = "CI=true: this test skipped instead of running: %s" % reason


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (pytest.skip(allow_module_level=True), importorskip)."""
    outcome = yield
    report = outcome.get_result()
    if not CI or not report.skipped:
        return
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = "CI=true: %s skipped instead of running its tests: %s" % (collector.nodeid, reason)


def pytest_terminal_summary(terminalreporter):
    if CI:
        terminalreporter.write_line("CI=true: skips of tests count as failures (tests/conftest.py)")
        return
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep(
            "!", "%d test(s) SKIPPED: they did not test anything here (under CI=true each one fails)" % len(skipped))
