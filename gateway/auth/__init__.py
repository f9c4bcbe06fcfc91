"""Authentication: the node's chain of authenticators (docs/protocol.md section 8).

:class:`AuthChain` is what every transport calls: ``authenticate(credentials)`` gives
a Deferred of an :class:`~gateway.core.auth.Identity`, or fails with
:class:`~gateway.errors.Unauthorized` (401 / close 4001), :class:`~gateway.errors.Forbidden`
(403 / close 4003) or :class:`~gateway.errors.Unavailable` (503).  With no
authenticator configured every request is :data:`~gateway.core.auth.OPEN`.

The built-in authenticators live beside this module (:mod:`gateway.auth.jwt`,
:mod:`gateway.auth.apikey`) and are exposed as plugins like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.auth import OPEN, Credentials, Identity
from gateway.errors import Forbidden, GatewayError, Unauthorized, Unavailable

__all__ = ["AuthChain", "Revocations"]


class Revocations(Protocol):
    """Where revoked identities are looked up (see :mod:`gateway.auth.revocation`)."""

    def is_revoked(self, identity: Identity) -> bool | defer.Deferred[bool]:
        """True when ``identity``'s token was issued at or before its ``sub`` was revoked."""


class AuthChain:
    """The node's authenticators, asked in order.

    Args:
        authenticators: :class:`~gateway.interfaces.IAuthenticator` providers.
        now: the wall clock (seconds since the Unix epoch), for ``exp``.
        revocations: where revoked identities are looked up, or None.
    """

    _log = Logger()

    def __init__(
        self,
        authenticators: Sequence[Any] = (),
        now: Callable[[], float] = time.time,
        revocations: Revocations | None = None,
    ) -> None:
        self.authenticators = list(authenticators)
        self.now = now
        self.revocations = revocations

    def stop(self) -> defer.Deferred[None]:
        """Stop every authenticator that has something to stop (``stop()``: the
        ``http`` authenticator's connection pool); called when the node stops."""
        stops = [defer.maybeDeferred(a.stop) for a in self.authenticators if callable(getattr(a, "stop", None))]
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    @property
    def configured(self) -> bool:
        """True when requests must authenticate (some authenticator is configured)."""
        return bool(self.authenticators)

    def authenticate(self, credentials: Credentials) -> defer.Deferred[Identity]:
        """The identity ``credentials`` prove (see the module docstring)."""
        if not self.configured:
            return defer.succeed(OPEN)
        if not credentials.presented() and not credentials.cookies:
            return defer.fail(Unauthorized("authentication required"))
        return defer.ensureDeferred(self._authenticate(credentials))

    async def _authenticate(self, credentials: Credentials) -> Identity:
        refusal: GatewayError | None = None
        for authenticator in self.authenticators:
            try:
                identity = await defer.maybeDeferred(authenticator.authenticate, credentials)
            except GatewayError as e:
                if isinstance(e, (Forbidden, Unavailable)):
                    raise
                refusal = refusal or e
                continue
            except Exception:
                self._log.failure("authenticator {auth!r} failed", Failure(), auth=authenticator)
                raise Unavailable("authentication is not available") from None
            if identity is None:
                continue
            return await self.check(identity)
        raise refusal or Unauthorized("no valid credentials")

    async def check(self, identity: Identity) -> Identity:
        """Refuse an expired or revoked identity (also used again on refresh)."""
        if identity.expired(self.now()):
            raise Unauthorized("the token has expired")
        if self.revocations is not None and identity.sub is not None:
            revoked = await defer.maybeDeferred(self.revocations.is_revoked, identity)
            if revoked:
                raise Forbidden("this identity was revoked")
        return identity


def read_secret_file(path: str, option: str) -> str:
    """The text of the secret file ``path``.

    Raises:
        ValueError: naming ``option`` and the path, never the content.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{option}: {path} is not UTF-8 text") from None


def _environ(environ: Any) -> Any:
    import os

    return os.environ if environ is None else environ


def api_keys_from_config(config: Any, environ: Any = None) -> list[str]:
    """The API keys of ``--api-key``, ``--api-key-file`` (one a line) and
    ``GATEWAY_API_KEYS`` (separated by commas or whitespace), in that order."""
    env = _environ(environ)
    keys = list(config.api_key)
    if config.api_key_file:
        text = read_secret_file(config.api_key_file, "--api-key-file")
        from_file = [line.strip() for line in text.splitlines() if line.strip()]
        if not from_file:
            # An operator who meant to require keys must not get an open node.
            raise ValueError(f"--api-key-file: {config.api_key_file} holds no key")
        keys += from_file
    keys += [k for k in env.get("GATEWAY_API_KEYS", "").replace(",", " ").split() if k]
    return keys


def jwt_from_config(config: Any, environ: Any = None) -> Any:
    """The :class:`~gateway.auth.jwt.JWTAuthenticator` of the ``--jwt-*`` options and
    ``GATEWAY_JWT_SECRET``, or None when none gives a key.

    The secret is the first of ``--jwt-secret``, ``--jwt-secret-file``,
    ``GATEWAY_JWT_SECRET``; a secret and ``--jwt-public-key`` together are an error.
    """
    from gateway.auth.jwt import JWTAuthenticator

    env = _environ(environ)
    secret = config.jwt_secret
    if secret is None and config.jwt_secret_file:
        secret = read_secret_file(config.jwt_secret_file, "--jwt-secret-file").strip()
        if not secret:
            raise ValueError(f"--jwt-secret-file: {config.jwt_secret_file} is empty")
    if secret is None and env.get("GATEWAY_JWT_SECRET"):
        secret = env["GATEWAY_JWT_SECRET"]
    public_key = None
    if config.jwt_public_key:
        public_key = read_secret_file(config.jwt_public_key, "--jwt-public-key")
    if secret is not None and public_key is not None:
        raise ValueError("give a JWT secret or --jwt-public-key, not both")
    if secret is None and public_key is None:
        return None
    try:
        return JWTAuthenticator(secret, public_key, config.jwt_audience, config.jwt_issuer, config.jwt_leeway)
    except ValueError as e:
        raise ValueError(f"--jwt-public-key: {e}" if public_key is not None else f"--jwt-secret: {e}") from None


def auth_chain_from_config(config: Any, reactor: Any = None, environ: Any = None) -> AuthChain:
    """The node's :class:`AuthChain` for ``config``: API keys first, then JWT, then
    ``--authenticator`` plugins (:mod:`gateway.auth.plugins`), then ``--auth-url``.

    Secrets may also come from files (``--jwt-secret-file``, ``--api-key-file``: one
    key a line) and the environment (``GATEWAY_JWT_SECRET``, ``GATEWAY_API_KEYS``:
    keys separated by commas or whitespace), so they need not be on the command line
    that ``ps`` shows.  ``--authenticator jwt``, ``api-key`` or ``http`` without
    arguments select what those options configure, which is then not added twice.

    Raises:
        ValueError: naming the option whose value cannot be used.
    """
    from gateway.auth.apikey import APIKeyAuthenticator
    from gateway.auth.plugins import load_authenticators

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    authenticators: list[Any] = []

    keys = api_keys_from_config(config, environ)
    if keys:
        authenticators.append(APIKeyAuthenticator(keys))
    jwt = jwt_from_config(config, environ)
    if jwt is not None:
        authenticators.append(jwt)
    specs = list(config.authenticator)
    # Without arguments these name what the options above already configured.
    already = {"api-key": bool(keys), "jwt": jwt is not None, "http": bool(config.auth_url)}
    specs = [s for s in specs if not already.get(s, False)]
    authenticators += load_authenticators(tuple(specs), config, reactor)
    if config.auth_url:
        from gateway.auth.http import HTTPAuthenticator

        try:
            authenticators.append(HTTPAuthenticator(config.auth_url, reactor, cache=config.auth_cache))
        except ValueError as e:
            raise ValueError(f"--auth-url: {e}") from None
    return AuthChain(authenticators)


__all__ += ["api_keys_from_config", "auth_chain_from_config", "jwt_from_config", "read_secret_file"]
