"""A user's own authenticator, dropped into a ``gateway_plugins/`` folder on sys.path,
is found and selected with --authenticator NAME:ARGS (docs/protocol.md section 8)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from twisted.internet.task import Clock
from twisted.plugin import pluginPackagePaths

from gateway.auth import auth_chain_from_config
from gateway.auth.plugins import discover_authenticator_factories
from gateway.config import load_config
from gateway.core.auth import Credentials
from gateway.errors import Forbidden, Unauthorized
from gateway.hooks import PLUGIN_PACKAGE, plugin_package
from tests.e2e.support import TIMEOUT_FACTOR

# What a user writes: a header-based authenticator (e.g. behind a proxy that signs in).
MYAUTH = textwrap.dedent(
    '''
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from gateway.core.auth import Identity
    from gateway.errors import Forbidden
    from gateway.interfaces import IAuthenticator, IAuthenticatorFactory


    @implementer(IAuthenticator)
    class RoomPass:
        def __init__(self, password, room):
            self.password = password
            self.room = room

        def authenticate(self, credentials):
            if credentials.token is None or not credentials.token.startswith("pass:"):
                return None
            user, _, password = credentials.token[len("pass:"):].partition("/")
            if password != self.password:
                raise Forbidden("wrong room password")
            return Identity(sub=user, subscribe=(self.room,), publish=(self.room,))


    @implementer(IPlugin, IAuthenticatorFactory)
    class RoomPassFactory:
        authType = "myauth"
        authHelp = "Users who know the room password may use the room."
        argStringFormat = "PASSWORD,ROOM"

        def make_authenticator(self, argstring, config, reactor):
            password, _, room = argstring.partition(",")
            if not password or not room:
                raise ValueError("myauth needs PASSWORD,ROOM")
            return RoomPass(password, room)


    myauth = RoomPassFactory()
    '''
)


def readme_example() -> str:
    """The authenticator example of plugins/README.md."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "plugins" / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)\n```", text, re.DOTALL) if "IAuthenticatorFactory" in b]
    return block


def write_plugin(folder, source=MYAUTH):
    (folder / "gateway_plugins").mkdir()  # no __init__.py: Twisted's alternate plugin package
    (folder / "gateway_plugins" / "gateway_myauth.py").write_text(source)


@pytest.fixture(params=["test", "readme"])
def installed(tmp_path, monkeypatch, request):
    """The folder on sys.path, and the plugin package's path extended as it would have
    been had the folder been on sys.path when the package was imported; with this
    module's plugin, then with the example of plugins/README.md."""
    write_plugin(tmp_path, MYAUTH if request.param == "test" else readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    package = plugin_package()
    extra = [p for p in pluginPackagePaths(PLUGIN_PACKAGE) if p.startswith(str(tmp_path))]
    assert extra == [str(tmp_path / "gateway_plugins")]
    monkeypatch.setattr(package, "__path__", [*package.__path__, *extra])
    yield tmp_path
    sys.modules.pop(f"{PLUGIN_PACKAGE}.gateway_myauth", None)


def authenticate(auth, credentials):
    out: list = []
    auth.authenticate(credentials).addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_a_dropped_in_authenticator_authenticates_through_the_chain(installed):
    """--authenticator myauth:s3same,room:7 builds it; the chain accepts the password,
    refuses a wrong one (forbidden) and anything else (unauthorized)."""
    assert "myauth" in discover_authenticator_factories()
    auth = auth_chain_from_config(load_config({"authenticator": ["myauth:s3same,room:7"]}), Clock(), environ={})
    identity = authenticate(auth, Credentials("websocket", token="pass:carol/s3same"))
    assert identity.sub == "carol"
    assert identity.may_subscribe("room:7") and not identity.may_subscribe("room:8")
    with pytest.raises(Forbidden):
        authenticate(auth, Credentials("websocket", token="pass:carol/guess"))
    with pytest.raises(Unauthorized):
        authenticate(auth, Credentials("websocket", token="something-else"))


def test_a_dropped_in_authenticator_beside_the_builtin_ones(installed):
    """The user's plugin after an API key in one chain: both work."""
    auth = auth_chain_from_config(
        load_config({"api-key": ["backend-key"], "authenticator": ["myauth:pw,news"]}), Clock(), environ={}
    )
    assert authenticate(auth, Credentials("publish", authorization="Bearer backend-key")).kind == "api-key"
    assert authenticate(auth, Credentials("sse", token="pass:dan/pw")).sub == "dan"


def test_its_argument_errors_name_authenticator(installed, monkeypatch):
    from gateway.app import Gateway
    from gateway.config import ConfigError
    with pytest.raises(ConfigError, match=r"^--authenticator myauth: myauth needs PASSWORD,ROOM$"):
        Gateway(load_config({"authenticator": ["myauth:only-password"]}), reactor=Clock())


PROBE = textwrap.dedent(
    """
    import sys
    from twisted.internet.task import Clock
    from gateway.auth import auth_chain_from_config
    from gateway.config import load_config
    from gateway.core.auth import Credentials

    chain = auth_chain_from_config(load_config({"authenticator": ["myauth:pw,room:1"]}), Clock(), environ={})
    out = []
    chain.authenticate(Credentials("poll", token="pass:erin/pw")).addBoth(out.append)
    print(out[0].sub, out[0].subscribe)
    """
)


def test_a_fresh_process_with_the_folder_on_pythonpath_finds_it(tmp_path):
    """No monkeypatching: a process started with the folder on PYTHONPATH (after the
    gateway's own source) finds the plugin as the gateway would at start."""
    import os
    import pathlib

    write_plugin(tmp_path)
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path)])}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60 * TIMEOUT_FACTOR, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "erin ('room:1',)"
