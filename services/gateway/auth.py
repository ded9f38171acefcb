"""Who is calling: API keys, roles and scopes as bluesky-httpserver names them.

The gateway, not the client, decides `user` and `user_group`: they come from the principal
that the key belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from services.gateway.errors import Unauthorized

READ_SCOPES = frozenset(
    {
        "read:status",
        "read:queue",
        "read:history",
        "read:resources",
        "read:config",
        "read:monitor",
        "read:console",
        "read:lock",
        "read:testing",
    }
)
USER_WRITE_SCOPES = frozenset(
    {
        "write:queue:edit",
        "write:queue:control",
        "write:manager:control",
        "write:plan:control",
        "write:execute",
        "write:history:edit",
        "write:queue:propose",  # ours (ADR 30): propose items for review
    }
)
# Ours (ADR 30): review proposals (edit, approve into the queue, reject).
REVIEW_SCOPES = frozenset({"write:queue:approve"})
EXPERT_WRITE_SCOPES = frozenset(
    {"write:permissions", "write:scripts", "write:config", "write:lock", "user:apikeys"}
)
ADMIN_SCOPES = frozenset({"admin:apikeys", "admin:read:principals", "admin:metrics"})
ALL_SCOPES = (
    READ_SCOPES
    | USER_WRITE_SCOPES
    | EXPERT_WRITE_SCOPES
    | ADMIN_SCOPES
    | REVIEW_SCOPES
    | {"write:manager:stop", "write:testing"}
)

SINGLE_USER_NAME = "UNAUTHENTICATED_SINGLE_USER"
PUBLIC_USER_NAME = "UNAUTHENTICATED_PUBLIC"
DEFAULT_USER_GROUP = "primary"

# The roles of bluesky-httpserver's default policy, with the same scopes.
DEFAULT_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"read:status", "user:apikeys"}) | ADMIN_SCOPES,
    "expert": READ_SCOPES | USER_WRITE_SCOPES | EXPERT_WRITE_SCOPES | REVIEW_SCOPES,
    "advanced": READ_SCOPES | USER_WRITE_SCOPES | REVIEW_SCOPES | {"user:apikeys"},
    "user": READ_SCOPES | USER_WRITE_SCOPES | {"user:apikeys"},
    "observer": READ_SCOPES | {"user:apikeys"},
    # Ours (ADR 30): may read and propose, nothing else (e.g. an agent's key).
    "proposer": READ_SCOPES | {"write:queue:propose"},
    "unauthenticated_single_user": ALL_SCOPES - ADMIN_SCOPES,
    "unauthenticated_public": frozenset({"read:status"}),
}


@dataclass(frozen=True)
class Principal:
    """The caller as the gateway sees it."""

    name: str  # the `user` the gateway sets on the caller's requests
    scopes: frozenset[str]
    user_group: str = DEFAULT_USER_GROUP
    roles: tuple[str, ...] = ()
    uuid: str = ""  # a logged-in principal's uuid (32 hex digits); "" for the others
    identities: tuple[tuple[str, str], ...] = ()  # (id, provider)
    api_key_scopes: tuple[str, ...] | None = None  # the scopes of the API key used, if any
    session: str = ""  # the session of the access token used, if any
    anonymous: bool = False  # no credentials at all

    def require(self, scope: str) -> None:
        """Unauthorized (401, as bluesky-httpserver) unless the principal has `scope`."""
        if scope and scope not in self.scopes:
            hint = (
                " (no credentials: send 'Authorization: Bearer <token>' or "
                "'Authorization: ApiKey <key>')"
                if self.anonymous
                else f" (user '{self.name}')"
            )
            raise Unauthorized(
                f"Not enough permissions. Requires scopes {[scope]}. "
                f"Request had scopes {sorted(self.scopes)}{hint}"
            )


@dataclass(frozen=True)
class ApiKey:
    """One configured key: only its SHA-256 is kept in memory."""

    sha256: str
    principal: Principal


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def scopes_of(
    roles: Iterable[str],
    extra: Iterable[str] = (),
    known: Mapping[str, frozenset[str]] = DEFAULT_ROLES,
) -> frozenset[str]:
    """The union of the roles' scopes and the extra scopes; unknown names are errors."""
    out: set[str] = set()
    for role in roles:
        if role not in known:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(sorted(known))})")
        out |= known[role]
    for scope in extra:
        if scope not in ALL_SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        out.add(scope)
    return frozenset(out)


API_KEY_COOKIE = "bluesky_httpserver_api_key"  # the reference's cookie name
BAD_SCHEME = (
    "Authorization header must include the authorization type followed by a space and then "
    "the secret, as in 'Bearer SECRET' or 'Apikey SECRET'. "
)


@dataclass(frozen=True)
class Credentials:
    """What a request presents: an API key (header, `api_key` query value or cookie) or a token."""

    api_key: str | None = None
    token: str | None = None

    @classmethod
    def of(
        cls, authorization: str | None, api_key: str | None = None, cookie: str | None = None
    ) -> Credentials:
        """From the `Authorization` header (`ApiKey` or `Bearer`), the query, a cookie."""
        token = header_key = None
        if authorization and authorization.strip():
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "apikey":
                header_key = value.strip() or None
            elif scheme.lower() == "bearer":
                token = value.strip() or None
            else:
                # 401 where the reference answers 400: it is credentials that are wrong.
                raise Unauthorized(BAD_SCHEME)
        key = api_key or header_key or cookie or None
        return cls(api_key=key, token=None if key else token)


class Authenticates(Protocol):
    """What the gateway asks: who presents these credentials (401 if nobody)."""

    async def principal(self, creds: Credentials) -> Principal: ...


@dataclass(frozen=True)
class Authenticator:
    """Keys from the gateway's own config file and the single-user key; no logins."""

    keys: tuple[ApiKey, ...] = ()
    single_user_key: str | None = None
    anonymous_scopes: frozenset[str] | None = None  # None: anonymous access is off
    open_access: bool = False  # no keys at all (a closed lab machine, loopback only)
    _single_user: Principal = field(
        default=Principal(
            SINGLE_USER_NAME,
            DEFAULT_ROLES["unauthenticated_single_user"],
            roles=("unauthenticated_single_user",),
        )
    )

    async def principal(self, creds: Credentials) -> Principal:
        return self.authenticate(creds)

    def authenticate(self, creds: Credentials) -> Principal:
        if self.open_access:
            return self._single_user
        key = creds.api_key
        if key is None:
            if creds.token is not None:
                raise Unauthorized(
                    f"{TOKEN_INVALID}: this gateway has no logins (send 'Authorization: ApiKey')"
                )
            return public_principal(self.anonymous_scopes)
        if self.single_user_key is not None and hmac.compare_digest(
            key.encode(), self.single_user_key.encode()
        ):
            return self._single_user
        digest = key_digest(key)
        for k in self.keys:
            if hmac.compare_digest(digest, k.sha256):
                return k.principal
        raise Unauthorized("Invalid API key")


TOKEN_INVALID = "Could not validate credentials"


def public_principal(scopes: frozenset[str] | None) -> Principal:
    """The caller without credentials: anonymous scopes if allowed, else none."""
    return Principal(
        PUBLIC_USER_NAME,
        scopes or frozenset(),
        roles=("unauthenticated_public",) if scopes is not None else (),
        anonymous=True,
    )
