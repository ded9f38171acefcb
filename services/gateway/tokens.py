"""Access and refresh tokens: HS256 JWTs with bluesky-httpserver's claims, made with PyJWT.

The first secret key signs; every key is tried to verify, so keys can be rotated (as in the
reference). Access tokens also carry the session (`sid`): a revoked session ends its access
tokens too, not only its refreshes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from services.gateway.errors import Unauthorized

ALGORITHM = "HS256"
EXPIRED_ACCESS = "Access token has expired. Refresh token."  # the client refreshes on this text
EXPIRED_SESSION = "Session has expired. Please re-authenticate."
INVALID = "Could not validate credentials"


@dataclass(frozen=True)
class TokenKeys:
    """The secret keys: the first signs, all verify."""

    keys: tuple[str, ...]

    def encode(self, claims: dict[str, Any], max_age: float) -> str:
        exp = int(time.time() + max_age)
        return jwt.encode({**claims, "exp": exp}, self.keys[0], algorithm=ALGORITHM)

    def decode(self, token: str, expired_msg: str, kind: str) -> dict[str, Any]:
        """The claims of a valid token of `kind` ("access" or "refresh"); Unauthorized if not."""
        for key in self.keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[ALGORITHM], options={"require": ["exp"]}
                )
                break
            except jwt.ExpiredSignatureError:
                raise Unauthorized(expired_msg) from None
            except jwt.InvalidTokenError:
                continue  # the next key of the rotation
        else:
            raise Unauthorized(INVALID)
        if claims.get("type") != kind:
            other = str(claims.get("type", "unknown"))
            raise Unauthorized(f"{INVALID}: this is {_a(other)} token, not {_a(kind)} token")
        return claims


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def access_claims(
    principal: str, ids: list[dict[str, str]], scopes: list[str], sid: str
) -> dict[str, Any]:
    return {
        "type": "access",
        "sub": principal,
        "sub_typ": "user",
        "scp": scopes,
        "ids": ids,
        "sid": sid,
    }


def refresh_claims(sid: str, principal: str) -> dict[str, Any]:
    return {"type": "refresh", "sid": sid, "sub": principal}
