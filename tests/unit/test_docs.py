"""docs/protocol.md keeps up with the code: every error code (with its HTTP status),
close code, option, endpoint and metric the code defines is in it, and every
"docs/protocol.md section N" cited in the sources names a section it has."""

from __future__ import annotations

import pathlib
import re

from twisted.internet.task import Clock

from gateway import errors
from gateway.config import OPTIONS, Config
from gateway.tap import Options

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"

# The numbering of protocol 1.1, which docs/protocol.md keeps so that citations of
# "section N" can move from one to the other unchanged.
SECTIONS = {
    1: "Concepts",
    2: "Endpoints",
    3: "Server events",
    4: "WebSocket",
    5: "Server-Sent Events",
    6: "Long-polling",
    7: "Publish over HTTP",
    8: "Authentication",
    9: "Browser client",
    10: "Running it",
    11: "Presence",
}


def protocol() -> str:
    return PROTOCOL.read_text()


def section(number: int) -> str:
    """The text of section ``number`` of docs/protocol.md (up to the next ``## `` heading)."""
    match = re.search(rf"^## {number}\. .*?(?=^## )", protocol() + "\n## end", re.DOTALL | re.MULTILINE)
    assert match, f"docs/protocol.md has no section {number}"
    return match.group(0)


def error_classes() -> list[type[errors.GatewayError]]:
    found, todo = [], [errors.GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def close_codes() -> dict[str, int]:
    return {name: value for name, value in vars(errors).items() if name.startswith("CLOSE_") and isinstance(value, int)}


def test_sections_keep_the_protocol_numbering():
    """Sections 1-11 exist, in order, with the protocol's titles."""
    headings = re.findall(r"^## (\d+)\. (.*)$", protocol(), re.MULTILINE)
    assert [int(n) for n, _ in headings] == list(SECTIONS)
    for (number, title), expected in zip(headings, SECTIONS.values()):
        assert title.startswith(expected), (number, title)


def test_every_error_code_is_documented_with_its_http_status():
    """Each GatewayError subclass's code is a row of the section 7 table, with its status."""
    classes = error_classes()
    assert len({cls.code for cls in classes}) >= 8  # the walk found the whole table
    table = section(7)
    for cls in classes:
        row = re.search(rf"^\| `{cls.code}` \| (\d{{3}}) \|", table, re.MULTILINE)
        assert row, f"error code {cls.code} is not in the table of docs/protocol.md section 7"
        assert int(row.group(1)) == cls.http_status, cls.code


def test_every_error_code_appears_where_websocket_errors_are_listed():
    """Section 4 says when each code is (or is not) sent on a WebSocket."""
    text = section(4)
    for cls in error_classes():
        assert f"`{cls.code}`" in text, cls.code


def test_every_close_code_is_documented():
    """Each CLOSE_* constant is a row of the section 4 close-code table."""
    codes = close_codes()
    assert len(codes) >= 5
    text = section(4)
    for name, code in codes.items():
        assert re.search(rf"^\| {code} \| \S", text, re.MULTILINE), f"{name} = {code} is not in docs/protocol.md section 4"


def test_every_option_is_documented():
    """Every option of the option table, and --config, is in docs/protocol.md or the README."""
    docs = protocol() + (ROOT / "README.md").read_text()
    names = [o.name for o in OPTIONS] + [p[0] for p in Options.optParameters]
    for name in names:
        assert f"`--{name}" in docs, name


def test_every_option_is_in_the_section_10_table():
    """Section 10's own table lists every option (those not implemented yet marked so)."""
    text = section(10)
    for o in OPTIONS:
        assert re.search(rf"^\| [^|]*`--{o.name}[ `]", text, re.MULTILINE), o.name


def _gateway():
    from gateway.app import Gateway
    from gateway.testing import ManualBroker

    return Gateway(Config(), reactor=Clock(), broker=ManualBroker())


def test_every_endpoint_is_documented():
    """Every child of GatewayResource is in the endpoint table of section 2."""
    from gateway.resource import GatewayResource

    children = GatewayResource(_gateway()).children
    assert b"ws" in children
    text = section(2)
    for path in children:
        assert re.search(rf"^\| `[A-Z]+ /{path.decode()}`", text, re.MULTILINE), path


def test_every_metric_is_documented():
    """Every metric family /metrics exposes is in section 2."""
    from gateway.metrics import make_registry

    names = [family.name for family in make_registry(_gateway()).collect()]
    assert "gateway_broker_up" in names
    text = section(2)
    for name in names:
        assert f"`{name}" in text, name


CITATION = re.compile(r"(?:docs/protocol\.md|PROTOCOL\.md),? sections? (\d+)((?:(?:, | and )\d+)*)")


def test_cited_sections_exist():
    """Every "docs/protocol.md section N" (or the older "PROTOCOL.md section N") in the
    sources and the README names a section of docs/protocol.md."""
    sources = [p for d in ("gateway", "tests", "bench", "plugins", "twisted") for p in (ROOT / d).rglob("*.py")]
    sources += [ROOT / "README.md", *ROOT.glob("*/README.md")]
    cited = 0
    for path in sources:
        for match in CITATION.finditer(path.read_text()):
            numbers = [int(match.group(1))] + [int(n) for n in re.findall(r"\d+", match.group(2))]
            for number in numbers:
                cited += 1
                assert number in SECTIONS, f"{path.relative_to(ROOT)} cites section {number}"
    assert cited > 10


def test_readme_points_to_the_project_protocol():
    """The README sends readers to docs/protocol.md, not to documents a clone lacks."""
    readme = (ROOT / "README.md").read_text()
    assert "(docs/protocol.md)" in readme
    assert "shared documents" not in readme
    assert "PROTOCOL.md" not in readme
