"""Who is calling: API keys, roles and scopes as bluesky-httpserver names them.

The gateway, not the client, decides `user` and `user_group`: they come from the principal
that the key belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.gateway.errors import Forbidden, Unauthorized

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
    }
)
EXPERT_WRITE_SCOPES = frozenset(
    {"write:permissions", "write:scripts", "write:config", "write:lock", "user:apikeys"}
)
ADMIN_SCOPES = frozenset({"admin:apikeys", "admin:read:principals", "admin:metrics"})
ALL_SCOPES = (
    READ_SCOPES
    | USER_WRITE_SCOPES
    | EXPERT_WRITE_SCOPES
    | ADMIN_SCOPES
    | {"write:manager:stop", "write:testing"}
)

SINGLE_USER_NAME = "UNAUTHENTICATED_SINGLE_USER"
PUBLIC_USER_NAME = "UNAUTHENTICATED_PUBLIC"
DEFAULT_USER_GROUP = "primary"

# The roles of bluesky-httpserver's default policy, with the same scopes.
DEFAULT_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"read:status", "user:apikeys"}) | ADMIN_SCOPES,
    "expert": READ_SCOPES | USER_WRITE_SCOPES | EXPERT_WRITE_SCOPES,
    "advanced": READ_SCOPES | USER_WRITE_SCOPES,
    "user": READ_SCOPES | USER_WRITE_SCOPES,
    "observer": READ_SCOPES,
    "unauthenticated_single_user": ALL_SCOPES - ADMIN_SCOPES,
    "unauthenticated_public": frozenset({"read:status"}),
}


@dataclass(frozen=True)
class Principal:
    """The caller as the gateway sees it."""

    name: str
    scopes: frozenset[str]
    user_group: str = DEFAULT_USER_GROUP
    roles: tuple[str, ...] = ()

    def require(self, scope: str) -> None:
        """Forbidden unless the principal has `scope` ("" needs only a valid key)."""
        if scope and scope not in self.scopes:
            raise Forbidden(
                f"Not enough permissions: the request needs scope '{scope}', "
                f"which user '{self.name}' does not have"
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


@dataclass(frozen=True)
class Authenticator:
    """Turns the credentials of a request into a Principal, or refuses them."""

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

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        """From the `Authorization` header (`ApiKey <key>`) or an `api_key` query value."""
        if self.open_access:
            return self._single_user
        key = api_key or _key_from_header(authorization)
        if key is None:
            if self.anonymous_scopes is not None:
                return Principal(
                    PUBLIC_USER_NAME, self.anonymous_scopes, roles=("unauthenticated_public",)
                )
            raise Unauthorized("Not authenticated: send the header 'Authorization: ApiKey <key>'")
        if self.single_user_key is not None and hmac.compare_digest(
            key.encode(), self.single_user_key.encode()
        ):
            return self._single_user
        digest = key_digest(key)
        for k in self.keys:
            if hmac.compare_digest(digest, k.sha256):
                return k.principal
        raise Unauthorized("Invalid API key")


def _key_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "apikey" or not value.strip():
        raise Unauthorized(
            f"Unsupported authorization scheme {scheme!r}: use 'Authorization: ApiKey <key>'"
        )
    return value.strip()
