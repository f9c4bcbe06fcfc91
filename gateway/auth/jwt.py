"""JWT authentication with pyjwt: HS256 with a shared secret, RS256/ES256 with a public key.

The token may come as ``Authorization: Bearer``, ``token=``, the ``gateway_token``
cookie or the WebSocket ``auth`` command (whichever the transport found; see
:class:`~gateway.core.auth.Credentials`).  Claims are read by
:func:`~gateway.core.auth.identity_from_claims`.
"""

from __future__ import annotations

from typing import Any

import attrs
import jwt as pyjwt
from zope.interface import implementer

from gateway.core.auth import Credentials, Identity, identity_from_claims
from gateway.errors import Unauthorized
from gateway.interfaces import IAuthenticator

__all__ = ["JWTAuthenticator"]

_SYMMETRIC = ("HS256",)
_ASYMMETRIC = ("RS256", "ES256")


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2


@implementer(IAuthenticator)
class JWTAuthenticator:
    """Verify JWTs signed with ``secret`` (HS256) or ``public_key`` (PEM, RS256/ES256).

    Args:
        secret: the HS256 secret.
        public_key: the PEM text of an RSA or EC public key.
        audience: the required ``aud``, or None.
        issuer: the required ``iss``, or None.
        leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.

    Raises:
        ValueError: when neither or both of ``secret`` and ``public_key`` are given,
            or the key cannot be loaded.
    """

    def __init__(
        self,
        secret: str | None = None,
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 5.0,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("a JWT authenticator needs a secret or a public key")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        if secret is not None:
            if not secret:
                raise ValueError("the JWT secret is empty")
            self._key: Any = secret
            self.algorithms = list(_SYMMETRIC)
        else:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self._key = load_pem_public_key(public_key.encode("utf-8"))  # type: ignore[union-attr]
            except (ValueError, TypeError) as e:
                raise ValueError(f"not a PEM public key: {e}") from None
            from cryptography.hazmat.primitives.asymmetric import ec, rsa

            # Only the algorithm of the key's type: pyjwt raises TypeError (not an
            # InvalidTokenError) for an RS256 token checked with an EC key.
            if isinstance(self._key, rsa.RSAPublicKey):
                self.algorithms = ["RS256"]
            elif isinstance(self._key, ec.EllipticCurvePublicKey):
                self.algorithms = ["ES256"]
            else:
                raise ValueError("not an RSA or EC public key")

    def authenticate(self, credentials: Credentials) -> Identity | None:
        candidates = [c for c in credentials.presented() if _looks_like_jwt(c)]
        if not candidates:
            return None
        refusal: Unauthorized | None = None
        for token in candidates:
            try:
                claims = pyjwt.decode(
                    token,
                    self._key,
                    algorithms=self.algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": ["sub"], "verify_aud": self.audience is not None},
                )
            except pyjwt.ExpiredSignatureError:
                refusal = refusal or Unauthorized("the token has expired")
                continue
            except pyjwt.ImmatureSignatureError:
                refusal = refusal or Unauthorized("the token is not valid yet")
                continue
            except pyjwt.InvalidTokenError as e:
                refusal = refusal or Unauthorized(f"invalid token: {str(e)[:120]}")
                continue
            # The deadline honours the leeway as pyjwt did at the check; ``exp``
            # itself (what the client is told) stays the token's.
            return attrs.evolve(identity_from_claims(claims), grace=self.leeway)
        assert refusal is not None
        raise refusal
