"""OIDC logins (authorization-code flow) with bluesky-httpserver's `OIDCAuthenticator` arguments.

The browser comes back from the identity provider to `/api/auth/provider/<name>/code?code=`;
the gateway exchanges the code at `token_uri` (Authlib's OAuth 2 client), then checks the ID
token's signature against the configured `public_keys` (matched by `kid`), its audience
(`client_id`) and expiry (PyJWT). The user is the token's `sub`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from services.gateway.providers import Mode, ProviderError, check_args

logger = logging.getLogger(__name__)
REQUIRED = {"client_id", "client_secret", "redirect_uri", "public_keys", "token_uri"}
OPTIONAL = {"authorization_endpoint", "confirmation_message"}
TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class OidcProvider:
    client_id: str
    client_secret: str
    redirect_uri: str
    token_uri: str
    public_keys: tuple[Mapping[str, Any], ...]
    authorization_endpoint: str = ""
    confirmation_message: str | None = None
    mode: Mode = "external"

    async def authenticate_code(self, code: str) -> str | None:
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        async with AsyncOAuth2Client(
            self.client_id,
            self.client_secret,
            redirect_uri=self.redirect_uri,
            timeout=TIMEOUT_S,
        ) as client:
            try:
                token = await client.fetch_token(
                    self.token_uri, code=code, grant_type="authorization_code"
                )
            except Exception as e:  # the provider refused the code, or did not answer
                logger.warning("OIDC: the code exchange at %s failed: %s", self.token_uri, e)
                return None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            logger.warning("OIDC: the token endpoint %s sent no id_token", self.token_uri)
            return None
        return self.subject(id_token)

    def subject(self, id_token: str) -> str | None:
        """The `sub` of a valid ID token; None (and a log line saying why) otherwise."""
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
            keys = [k for k in self.public_keys if k.get("kid") == kid]
            if kid is None and len(self.public_keys) == 1:
                keys = list(self.public_keys)  # no `kid`: the one key there is (RFC 7517)
            if not keys:
                known = [k.get("kid") for k in self.public_keys]
                logger.warning("OIDC: the ID token's key %r is none of %s", kid, known)
                return None
            key = jwt.PyJWK(dict(keys[0]))
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.client_id,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as e:
            logger.warning("OIDC: ID token refused: %s", e)
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) and sub else None


def oidc_provider(args: Any) -> OidcProvider:
    a = check_args("OIDCAuthenticator", args, REQUIRED, OPTIONAL)
    keys = a["public_keys"]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, Mapping) for k in keys):
        raise ProviderError("OIDCAuthenticator: public_keys must be a list of JWKs")
    for k in keys:
        try:
            jwt.PyJWK(dict(k))
        except jwt.PyJWTError as e:
            raise ProviderError(f"OIDCAuthenticator: public key {k.get('kid')!r}: {e}") from None
    for name in REQUIRED - {"public_keys"}:
        if not isinstance(a[name], str) or not a[name]:
            raise ProviderError(f"OIDCAuthenticator: {name} must be a non-empty string")
    client_id, redirect_uri = a["client_id"], a["redirect_uri"]
    endpoint = str(a.get("authorization_endpoint") or "")
    return OidcProvider(
        client_id=client_id,
        client_secret=a["client_secret"],
        redirect_uri=redirect_uri,
        token_uri=a["token_uri"],
        public_keys=tuple(keys),
        # As the reference: `{client_id}` and `{redirect_uri}` in the endpoint are filled in.
        authorization_endpoint=endpoint.format(client_id=client_id, redirect_uri=redirect_uri),
        confirmation_message=a.get("confirmation_message"),
    )
