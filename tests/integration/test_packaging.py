"""Packaging: the wheel installs ``gateway``, ``gateway_plugins`` and ``twisted/plugins``
(never a top-level ``plugins``), builds without setuptools warnings, and twistd's
``gateway`` plugin and the ``--hook`` plugins are found both from an installed wheel
and from a source checkout on sys.path (the README's editable install)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SITE_PACKAGES = sysconfig.get_paths()["purelib"]

# Third-party hooks live in a gateway_plugins/ directory without __init__.py.
THIRD_PARTY_HOOK = '''
from twisted.plugin import IPlugin
from zope.interface import implementer
from gateway.hooks import LogHook
from gateway.interfaces import IPublishHookFactory

@implementer(IPlugin, IPublishHookFactory)
class Factory:
    hookType = "third-party"
    hookHelp = "test"
    argStringFormat = "(none)"
    def make_hook(self, argstring):
        return LogHook()

factory = Factory()
'''

PROBE = """
import importlib.util, json
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import gateway_plugins  # whatever a plain import finds first must not confuse discovery
from gateway.hooks import discover_hook_factories, plugin_package
print(json.dumps({
    "taps": sorted(p.tapname for p in getPlugins(IServiceMaker)),
    "hooks": sorted(discover_hook_factories()),
    "gateway_plugins": plugin_package().__file__,
    "plugins": importlib.util.find_spec("plugins") is not None,
}))
"""


def probe(tmp_path: pathlib.Path, *path: str) -> dict:
    """Run PROBE with exactly ``path`` + the test venv's site-packages on sys.path
    (``-S``: no .pth files, so no other checkout of the project sneaks in)."""
    third_party = tmp_path / "third_party"
    (third_party / "gateway_plugins").mkdir(parents=True, exist_ok=True)
    (third_party / "gateway_plugins" / "gateway_third_party.py").write_text(THIRD_PARTY_HOOK)
    env = {"PYTHONPATH": ":".join([*path, str(third_party), SITE_PACKAGES]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """A wheel built (pip, isolated build) from a clean copy of the source tree, and pip's verbose output."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache", "results"),
    )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"), str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = (tmp / "dist").glob("gateway-*.whl")
    return built, out.stdout + out.stderr


def test_wheel_top_level_names_are_ours(wheel):
    """The wheel holds gateway, gateway_plugins and twisted/plugins only: no top-level `plugins`."""
    built, _ = wheel
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert sorted(top_level) == ["gateway", "gateway_plugins", "twisted"]
    assert sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}) == [
        "gateway",
        "gateway_plugins",
        "twisted",
    ]
    for needed in (
        "gateway_plugins/__init__.py",
        "gateway_plugins/gateway_hooks.py",
        "twisted/plugins/gateway_plugin.py",
        "gateway/broker/lua/publish.lua",
        "gateway/broker/lua/history.lua",
        "gateway/py.typed",
        "gateway/static/gateway.js",
        "gateway/static/gateway.d.ts",
        "gateway/static/demo.html",
        "gateway/static/demo.js",
        "gateway/static/demo.css",
    ):
        assert needed in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_builds_without_setuptools_warnings(wheel):
    """setuptools says nothing to warn about (no package missing from `packages`, no missing license file)."""
    _, output = wheel
    warnings = [line for line in output.splitlines() if "Warning:" in line and "Location 'file" not in line]
    assert warnings == []


def test_installed_wheel_finds_the_twistd_plugin_and_the_hooks(wheel, tmp_path):
    """Installed from the wheel: twistd's `gateway` plugin, the built-in hooks, and a third
    party's gateway_plugins/ hook are found; `plugins` is not importable."""
    built, _ = wheel
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(built)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    found = probe(tmp_path, str(target))
    assert "gateway" in found["taps"]
    assert found["hooks"] == ["allow-channels", "log", "third-party"]
    assert found["gateway_plugins"] == str(target / "gateway_plugins" / "__init__.py")
    assert found["plugins"] is False


def test_source_checkout_on_sys_path_finds_the_twistd_plugin_and_the_hooks(tmp_path):
    """The project root on sys.path (editable_mode=compat, PYTHONPATH=.): the plugins/ folder
    serves as gateway_plugins, and twistd finds `gateway`."""
    found = probe(tmp_path, str(ROOT))
    assert "gateway" in found["taps"]
    assert found["hooks"] == ["allow-channels", "log", "third-party"]
    assert found["gateway_plugins"] == str(ROOT / "plugins" / "__init__.py")


STATIC_PROBE = """
import json
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest
from gateway.app import Gateway
from gateway.config import Config
from gateway.resource import GatewayResource
from gateway.testing import ManualBroker
import gateway

tree = GatewayResource(Gateway(Config(demo=True), reactor=Clock(), broker=ManualBroker()))
sizes = {}
for path in ([b"gateway.js"], [b"gateway.d.ts"], [b"demo", b""], [b"demo", b"demo.js"], [b"demo", b"demo.css"]):
    node = tree
    for part in path:
        node = node.getChildWithDefault(part, DummyRequest(path))
    sizes["/".join(p.decode() for p in path)] = len(node.render(DummyRequest(path)))
print(json.dumps({"sizes": sizes, "package": gateway.__file__}))
"""


def test_installed_wheel_serves_the_browser_client_and_the_demo(wheel, tmp_path):
    """Installed from the wheel (not the source tree): /gateway.js, /gateway.d.ts and the
    demo's three files are served, byte for byte the files of the source tree."""
    built, _ = wheel
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(built)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {"PYTHONPATH": ":".join([str(target), SITE_PACKAGES]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", STATIC_PROBE], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["package"].startswith(str(target))
    static = ROOT / "gateway" / "static"
    assert found["sizes"] == {
        "gateway.js": len((static / "gateway.js").read_bytes()),
        "gateway.d.ts": len((static / "gateway.d.ts").read_bytes()),
        "demo/": len((static / "demo.html").read_bytes()),
        "demo/demo.js": len((static / "demo.js").read_bytes()),
        "demo/demo.css": len((static / "demo.css").read_bytes()),
    }
