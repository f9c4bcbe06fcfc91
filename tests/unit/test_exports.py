"""The public names of ``gateway`` resolve, and the sans-I/O core imports no I/O stack."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import gateway
import gateway.core

IO_PREFIXES = ("twisted.internet", "twisted.web", "autobahn", "txaio")


@pytest.mark.parametrize("name", gateway.__all__)
def test_public_name_resolves(name):
    """Every name in gateway.__all__ resolves to an object named in that module."""
    value = getattr(gateway, name)
    assert name == getattr(value, "__name__", name).rsplit(".", 1)[-1]


def test_unknown_attribute_is_attribute_error():
    """An unknown attribute of gateway raises AttributeError."""
    with pytest.raises(AttributeError):
        gateway.no_such_name  # noqa: B018


def test_dir_lists_public_names():
    """dir(gateway) lists every public name."""
    assert set() == set(gateway.__all__) - set(dir(gateway))


@pytest.mark.parametrize("name", gateway.core.__all__)
def test_core_public_name_resolves(name):
    """Every name in gateway.core.__all__ resolves."""
    assert name == getattr(gateway.core, name).__name__


def _io_modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30).stdout
    return [m for m in json.loads(out) if m.startswith(IO_PREFIXES)]


CORE_MODULES = sorted(f"gateway.core.{m.name}" for m in pkgutil.iter_modules(gateway.core.__path__))


@pytest.mark.parametrize(
    "statement",
    [
        "import gateway.core",
        "import " + ", ".join(CORE_MODULES + ["gateway.errors"]),
        "import gateway",
    ],
    ids=["gateway.core", "every-core-module", "gateway"],
)
def test_import_pulls_in_no_io_stack(statement):
    """Importing the core (or the lazy gateway package) loads no reactor, twisted.web, Autobahn or txaio."""
    assert [] == _io_modules_after(statement)
