"""Logins: the records kept in the auth bucket, and the bodies of the `/api/auth/` routes.

The shapes are bluesky-httpserver's (its `schemas.py`: Principal, Identity, Session,
APIKey), so `bluesky-queueserver-api` reads them unchanged. Times are UTC, ISO 8601 without
a zone and whole seconds, as the reference writes them. Stored records tolerate unknown
fields (old readers, new writers); request bodies refuse them.
"""

from __future__ import annotations

import msgspec

# KV keys of the auth bucket (`Subjects.auth_bucket`): `principal.<uuid>`,
# `identity.<provider>.<id as hex>`, `session.<uuid>`, `apikey.<sha256 of the secret>`,
# `secret.signing` (the shared token key when none is configured).
PRINCIPAL, IDENTITY, SESSION, APIKEY, SIGNING_SECRET = (
    "principal",
    "identity",
    "session",
    "apikey",
    "secret.signing",
)


class Record(msgspec.Struct, kw_only=True):
    """Base of stored records: unknown fields are kept out, not refused."""


class Identity(Record, kw_only=True):
    """How a principal logs in: a user name at one provider."""

    id: str
    provider: str
    latest_login: str | None = None


class PrincipalRecord(Record, kw_only=True):
    """A user known to the gateways (made at their first login)."""

    uuid: str  # 32 hex digits
    type: str = "user"
    identities: list[Identity] = msgspec.field(default_factory=list)


class IdentityRecord(Record, kw_only=True):
    """Index from an identity to its principal."""

    principal: str


class SessionRecord(Record, kw_only=True):
    """A chain of refresh tokens from one login; revoked or expired, it refreshes no more."""

    uuid: str
    principal: str
    expiration_time: float  # Unix time
    revoked: bool = False
    time_last_refreshed: float | None = None
    refresh_count: int = 0


class ApiKeyRecord(Record, kw_only=True):
    """An API key: only the SHA-256 of its secret is kept (it is the record's key)."""

    first_eight: str
    principal: str
    scopes: list[str]
    expiration_time: float | None = None  # Unix time; None: never
    note: str | None = None
    latest_activity: float | None = None


class SigningSecret(Record, kw_only=True):
    """The token-signing key the gateways share when the configuration names none."""

    key: str


# ----- request bodies -----


class AuthBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the auth routes' bodies: unknown fields are errors."""


class RefreshToken(AuthBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/auth/session/refresh`."""

    refresh_token: str


class ApiKeyParams(AuthBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/auth/apikey` and `/api/auth/principal/{uuid}/apikey`."""

    expires_in: int | None  # seconds; null: never expires
    scopes: list[str] | None = msgspec.field(default_factory=lambda: ["inherit"])
    note: str | None = None
