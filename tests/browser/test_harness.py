"""The harness itself: Chromium is found (a missing one fails, never skips), and the
browser tests share one pytest run with pytest-twisted tests in either order."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.browser import conftest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_missing_chromium_fails_instead_of_skipping(monkeypatch):
    """With no chromium on PATH (and none at /usr/bin), chromium_path() fails the test."""
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setattr(conftest.os.path, "exists", lambda path: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        conftest.chromium_path()


def test_browser_tests_share_a_run_with_twisted_tests(tmp_path):
    """One pytest run: a pytest-twisted test, a browser test, another pytest-twisted test, all pass."""
    twisted_test = "tests/integration/test_webclient.py::test_gateway_js_is_served_with_type_etag_and_cache_headers"
    browser_test = "tests/browser/test_transports.py::test_forced_transport_receives_in_order_and_publishes[websocket]"
    later_twisted = "tests/integration/test_webclient.py::test_if_none_match_is_a_304_without_body"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", twisted_test, browser_test, later_twisted],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 passed" in out.stdout
