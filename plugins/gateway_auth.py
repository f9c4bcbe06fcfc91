"""The gateway's built-in authenticators, exposed through its own extension point
(selected with ``--authenticator NAME[:ARGS]``; see plugins/README.md)."""

from gateway.auth.plugins import (
    APIKeyAuthenticatorFactory,
    HTTPAuthenticatorFactory,
    JWTAuthenticatorFactory,
)

jwt = JWTAuthenticatorFactory()
api_key = APIKeyAuthenticatorFactory()
http = HTTPAuthenticatorFactory()
