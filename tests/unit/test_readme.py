"""The README tells the truth: its option table and its test command match the code and CI."""

from __future__ import annotations

import pathlib
import re

from gateway.config import options_markdown

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_option_table_is_generated_from_the_option_table():
    """The README's option list is exactly what `python -m gateway.config` prints."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- options:start -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options_markdown()


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the very command the README gives for the tests."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
