"""Authenticators as plugins: ``--authenticator NAME[:ARGS]`` (docs/protocol.md section 8).

The built-in authenticator types are exposed to operators through
``plugins/gateway_auth.py`` (installed as ``gateway_plugins.gateway_auth``) and found
exactly as publish hooks are (:mod:`gateway.hooks`): every object providing
:class:`~gateway.interfaces.IAuthenticatorFactory` in a ``gateway_*`` module of the
``gateway_plugins`` package, so an operator's own authenticator dropped into a
``gateway_plugins/`` folder is selected the same way.

Built in:

* ``jwt``: ``secret=S``, ``secret-file=FILE`` or ``public-key=FILE``, with optional
  ``audience=A``, ``issuer=I``, ``leeway=SECONDS``; no arguments: the ``--jwt-*``
  options (and ``GATEWAY_JWT_SECRET``).
* ``api-key``: ``key=K[,K...]`` or ``file=FILE``; no arguments: ``--api-key``,
  ``--api-key-file`` and ``GATEWAY_API_KEYS``.
* ``http``: ``URL``, or ``url=URL`` with optional ``cache=SECONDS`` and
  ``timeout=SECONDS``; no arguments: ``--auth-url`` and ``--auth-cache`` (``--auth-url``
  alone selects it).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.interfaces import IAuthenticator, IAuthenticatorFactory

__all__ = [
    "APIKeyAuthenticatorFactory",
    "HTTPAuthenticatorFactory",
    "JWTAuthenticatorFactory",
    "discover_authenticator_factories",
    "load_authenticators",
    "parse_args",
]


def parse_args(argstring: str, known: tuple[str, ...], lists: tuple[str, ...] = ()) -> dict[str, str]:
    """``name=value,name=value`` into a dict.

    A name in ``lists`` takes every following item without ``=`` as well
    (``key=a,b,c``), joined with commas.

    Raises:
        ValueError: for an unknown name, an item without ``=`` or a repeated name.
    """
    out: dict[str, str] = {}
    last: str | None = None
    for item in argstring.split(","):
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            if last in lists:
                out[last] += "," + item
                continue
            # Never echo the item: it may be part of a secret that held a comma.
            raise ValueError(f"expected NAME=VALUE items separated by commas (arguments: {', '.join(known)})")
        if name not in known:
            shown = repr(name) if re.fullmatch(r"[a-z][a-z-]{0,30}", name) else "an unknown argument"
            raise ValueError(f"unknown argument {shown} (arguments: {', '.join(known)})")
        if name in out:
            raise ValueError(f"argument {name!r} given twice")
        out[name] = value
        last = name
    return out


def _seconds(args: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    if name not in args:
        return default
    try:
        value = float(args[name])
    except ValueError:
        raise ValueError(f"{name}= must be a number of seconds, got {args[name]!r}") from None
    if not value >= minimum:
        raise ValueError(f"{name}= must be >= {minimum:g}")
    return value


@implementer(IPlugin, IAuthenticatorFactory)
class JWTAuthenticatorFactory:
    authType = "jwt"
    authHelp = (
        "JSON Web Tokens signed with a shared secret (HS256) or a private key (RS256/ES256, "
        "verified with the public key); the token comes as Authorization: Bearer, token=, the "
        "gateway_token cookie or the WebSocket auth command."
    )
    argStringFormat = "secret=S | secret-file=FILE | public-key=FILE [,audience=A][,issuer=I][,leeway=SECONDS]"

    def make_authenticator(self, argstring: str, config: Any, reactor: Any) -> IAuthenticator:
        from gateway.auth import jwt_from_config, read_secret_file
        from gateway.auth.jwt import JWTAuthenticator

        if not argstring:
            found = jwt_from_config(config)
            if found is None:
                raise ValueError("jwt needs secret=, secret-file= or public-key= (or --jwt-secret, --jwt-secret-file, --jwt-public-key)")
            return found
        args = parse_args(argstring, ("secret", "secret-file", "public-key", "audience", "issuer", "leeway"))
        given = [n for n in ("secret", "secret-file", "public-key") if n in args]
        if len(given) != 1:
            raise ValueError("give exactly one of secret=, secret-file= and public-key=")
        secret = public_key = None
        if "secret" in args:
            secret = args["secret"]
        elif "secret-file" in args:
            secret = read_secret_file(args["secret-file"], "secret-file").strip()
            if not secret:
                raise ValueError(f"secret-file: {args['secret-file']} is empty")
        else:
            public_key = read_secret_file(args["public-key"], "public-key")
        return JWTAuthenticator(
            secret,
            public_key,
            args.get("audience") or None,
            args.get("issuer") or None,
            _seconds(args, "leeway", config.jwt_leeway),
        )


@implementer(IPlugin, IAuthenticatorFactory)
class APIKeyAuthenticatorFactory:
    authType = "api-key"
    authHelp = "API keys for backends (Authorization: Bearer KEY): subscribe and publish on every channel."
    argStringFormat = "key=K[,K...] | file=FILE (one key a line)"

    def make_authenticator(self, argstring: str, config: Any, reactor: Any) -> IAuthenticator:
        from gateway.auth import api_keys_from_config, read_secret_file
        from gateway.auth.apikey import APIKeyAuthenticator

        if not argstring:
            keys = api_keys_from_config(config)
            if not keys:
                raise ValueError("api-key needs key= or file= (or --api-key, --api-key-file, GATEWAY_API_KEYS)")
            return APIKeyAuthenticator(keys)
        args = parse_args(argstring, ("key", "file"), lists=("key",))
        if len(args) != 1:
            raise ValueError("give key= or file=, not both")
        if "key" in args:
            keys = [k for k in args["key"].split(",") if k]
        else:
            text = read_secret_file(args["file"], "file")
            keys = [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ValueError("no API key given")
        return APIKeyAuthenticator(keys)


@implementer(IPlugin, IAuthenticatorFactory)
class HTTPAuthenticatorFactory:
    authType = "http"
    authHelp = (
        "Ask the application's backend: POST the request's cookies, Authorization header and token "
        "as JSON to URL, which answers 200 with claims, 401 or 403 (cached per credential)."
    )
    argStringFormat = "URL | url=URL[,cache=SECONDS][,timeout=SECONDS]"

    def make_authenticator(self, argstring: str, config: Any, reactor: Any) -> IAuthenticator:
        from gateway.auth.http import DEFAULT_TIMEOUT, HTTPAuthenticator

        if argstring.startswith(("http://", "https://")):
            args = {"url": argstring}
        else:
            args = parse_args(argstring, ("url", "cache", "timeout"))
        url = args.get("url") or config.auth_url
        if not url:
            raise ValueError("http needs a URL (http:URL, http:url=URL or --auth-url URL)")
        return HTTPAuthenticator(
            url,
            reactor,
            cache=_seconds(args, "cache", config.auth_cache),
            timeout=_seconds(args, "timeout", DEFAULT_TIMEOUT, minimum=0.001),
        )


def discover_authenticator_factories() -> dict[str, Any]:
    """Every :class:`IAuthenticatorFactory` in ``gateway_*`` modules of the plugins
    package (the first of each ``authType`` wins), found as publish hooks are."""
    from gateway.hooks import discover_factories

    return discover_factories(IAuthenticatorFactory, "authType")


def load_authenticators(specs: tuple[str, ...], config: Any, reactor: Any) -> list[Any]:
    """Build the authenticators named by ``--authenticator NAME[:ARGS]`` values.

    Raises:
        ValueError: naming ``--authenticator``, for an unknown name (listing the known
            ones) or unusable arguments.
    """
    factories = discover_authenticator_factories() if specs else {}
    out = []
    from gateway.hooks import factory_named

    for spec in specs:
        factory, args = factory_named(factories, spec, "--authenticator", "authenticator")
        name = factory.authType
        try:
            authenticator = factory.make_authenticator(args, config, reactor)
        except ValueError as e:
            raise ValueError(f"--authenticator {name}: {e}") from None
        if not IAuthenticator.providedBy(authenticator):
            raise ValueError(f"--authenticator {name}: the plugin made {authenticator!r}, which does not provide IAuthenticator")
        out.append(authenticator)
    return out
