"""API keys for backends: ``Authorization: Bearer <key>`` (or ``token=``) gives every channel."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from zope.interface import implementer

from gateway.core.auth import Credentials, Identity, api_key_identity
from gateway.interfaces import IAuthenticator

__all__ = ["APIKeyAuthenticator"]


@implementer(IAuthenticator)
class APIKeyAuthenticator:
    """Accept any of ``keys`` (compared in constant time); None for anything else.

    Raises:
        ValueError: when no key, or an empty one, is given.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode("utf-8") for k in keys]
        if not self._keys or not all(self._keys):
            raise ValueError("API keys must not be empty")

    def authenticate(self, credentials: Credentials) -> Identity | None:
        for presented in (credentials.bearer, credentials.token):
            if presented is None:
                continue
            candidate = presented.encode("utf-8")
            # Compare with every key, so the time taken does not say which matched.
            matched = False
            for key in self._keys:
                matched |= hmac.compare_digest(candidate, key)
            if matched:
                return api_key_identity()
        return None
