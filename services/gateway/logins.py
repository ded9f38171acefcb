"""Logins as bluesky-httpserver does them: providers, sessions, tokens and API keys.

Who a request is: an API key (looked up by its hash in the shared store), an access token
(signed here, its session checked in the store), or nobody (anonymous scopes if allowed).
The scopes always come from the access policy at the time of the request, so a user who
loses a role loses its scopes at once, whatever their tokens say.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qserver.protocol import auth as rec
from services.gateway.access import ApiAccess
from services.gateway.auth import (
    DEFAULT_USER_GROUP,
    PUBLIC_USER_NAME,
    SINGLE_USER_NAME,
    Credentials,
    Principal,
)
from services.gateway.authstore import AuthStore
from services.gateway.errors import Unauthorized
from services.gateway.tokens import (
    EXPIRED_ACCESS,
    EXPIRED_SESSION,
    INVALID,
    TokenKeys,
    access_claims,
    refresh_claims,
)

logger = logging.getLogger(__name__)

ANONYMOUS_PROVIDER = "__anonymous__"  # the reference's provider name of the special users
REVOKED = "Permissions for the user are revoked. Please contact the administrator."


def iso(t: float | None) -> str | None:
    """UTC, whole seconds, no zone: how the reference writes its times."""
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC).replace(tzinfo=None).isoformat()


def now_iso() -> str:
    return iso(time.time()) or ""


@dataclass(frozen=True, kw_only=True)
class LoginSettings:
    """The `authentication` section, in seconds."""

    providers: Mapping[str, Any] = field(default_factory=dict)  # name -> provider object
    allow_anonymous_access: bool = False
    secret_keys: tuple[str, ...] = ()  # empty: one random key shared through the store
    single_user_api_key: str | None = None
    access_token_max_age: float = 15 * 60
    refresh_token_max_age: float = 7 * 24 * 3600
    session_max_age: float = 365 * 24 * 3600


class LoginAuthenticator:
    """The `Authenticates` of a gateway with bluesky-httpserver's configuration."""

    def __init__(
        self, settings: LoginSettings, access: ApiAccess, group: str, store: AuthStore
    ) -> None:
        self.settings = settings
        self.access = access
        self.group = group or DEFAULT_USER_GROUP
        self.store = store
        self._keys: TokenKeys | None = (
            TokenKeys(settings.secret_keys) if settings.secret_keys else None
        )

    async def keys(self) -> TokenKeys:
        if self._keys is None:
            self._keys = TokenKeys((await self.store.signing_secret(),))
        return self._keys

    # ----- who is calling -----

    def _special(self, name: str, anonymous: bool = False) -> Principal:
        return Principal(
            name,
            self.access.scopes_of(name),
            self.group,
            roles=tuple(sorted(self.access.roles_of(name))),
            identities=((name, ANONYMOUS_PROVIDER),),
            anonymous=anonymous,
        )

    def usernames(self, identities: list[tuple[str, str]]) -> list[str]:
        """The identities at providers configured now, of users the policy knows."""
        names = set(self.settings.providers)
        return sorted({i for i, p in identities if p in names and self.access.is_known(i)})

    def _principal(
        self,
        uuid: str,
        identities: list[tuple[str, str]],
        api_key_scopes: list[str] | None = None,
        session: str = "",
    ) -> Principal:
        users = self.usernames(identities)
        if not users:
            raise Unauthorized(REVOKED)
        scopes: set[str] = set()
        roles: set[str] = set()
        for u in users:
            scopes |= self.access.scopes_of(u)
            roles |= self.access.roles_of(u)
        if api_key_scopes is not None:
            # The key's scopes, within what the principal has now ("inherit": all of them).
            granted = set(api_key_scopes) & (scopes | {"inherit"})
            if "inherit" in granted:
                granted |= scopes
                granted.discard("inherit")
            scopes = granted
        return Principal(
            self.access.displayed_name(users[0]),
            frozenset(scopes),
            self.group,
            roles=tuple(sorted(roles)),
            uuid=uuid,
            identities=tuple(identities),
            api_key_scopes=None if api_key_scopes is None else tuple(sorted(api_key_scopes)),
            session=session,
        )

    async def principal(self, creds: Credentials) -> Principal:
        if creds.api_key is not None:
            return await self._by_api_key(creds.api_key)
        if creds.token is not None:
            return await self._by_token(creds.token)
        if self.settings.allow_anonymous_access:
            return self._special(PUBLIC_USER_NAME, anonymous=True)
        return Principal(PUBLIC_USER_NAME, frozenset(), self.group, anonymous=True)

    async def _by_api_key(self, key: str) -> Principal:
        if not self.settings.providers:
            single = self.settings.single_user_api_key
            if single is not None and hmac.compare_digest(key.encode(), single.encode()):
                return self._special(SINGLE_USER_NAME)
            raise Unauthorized("Invalid API key")
        secret = secret_of(key)
        record = await self.store.apikey(secret)
        if record is None:
            raise Unauthorized("Invalid API key")
        p = await self.store.principal(record.principal, cached=True)
        if p is None:
            raise Unauthorized("Invalid API key")
        await self.store.touch_apikey(secret)
        return self._principal(p.uuid, [(i.id, i.provider) for i in p.identities], record.scopes)

    async def _by_token(self, token: str) -> Principal:
        claims = (await self.keys()).decode(token, EXPIRED_ACCESS, "access")
        try:
            uuid, sid = str(claims["sub"]), str(claims.get("sid", ""))
            ids = [(str(i["id"]), str(i["idp"])) for i in claims["ids"]]
        except (KeyError, TypeError):
            raise Unauthorized(INVALID) from None
        if sid:
            s = await self.store.session(sid, cached=True)
            if s is None or s.revoked or s.expiration_time < time.time():
                raise Unauthorized(EXPIRED_SESSION)
        return self._principal(uuid, ids, session=sid)

    # ----- sessions -----

    async def open_session(self, provider: str, username: str) -> dict[str, Any]:
        """A login that passed: the principal (made if new), a session and its tokens."""
        p = await self.store.login(provider, username, now_iso())
        session = await self.store.new_session(p.uuid, self.settings.session_max_age)
        return await self.tokens(p, session.uuid)

    async def tokens(self, p: rec.PrincipalRecord, sid: str) -> dict[str, Any]:
        ids = [(i.id, i.provider) for i in p.identities]
        users = self.usernames(ids)
        if not users:
            raise Unauthorized(REVOKED)
        scopes = sorted(set().union(*(self.access.scopes_of(u) for u in users)))
        keys = await self.keys()
        s = self.settings
        claims = access_claims(p.uuid, [{"id": i, "idp": d} for i, d in ids], scopes, sid)
        return {
            "access_token": keys.encode(claims, s.access_token_max_age),
            "expires_in": int(s.access_token_max_age),
            "refresh_token": keys.encode(refresh_claims(sid, p.uuid), s.refresh_token_max_age),
            "refresh_token_expires_in": int(s.refresh_token_max_age),
            "token_type": "bearer",
        }

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        claims = (await self.keys()).decode(refresh_token, EXPIRED_SESSION, "refresh")
        session = await self.store.refresh_session(str(claims.get("sid", "")))
        if session is None:
            # Revoked or expired alike: an attacker learns nothing from the difference.
            raise Unauthorized(EXPIRED_SESSION)
        p = await self.store.principal(session.principal)
        if p is None:
            raise Unauthorized(EXPIRED_SESSION)
        return await self.tokens(p, session.uuid)

    # ----- what whoami and the admin routes show -----

    async def describe(self, p: rec.PrincipalRecord) -> dict[str, Any]:
        """A principal as the reference's `schemas.Principal`, with its sessions and keys."""
        sessions = await self.store.sessions_of(p.uuid)
        keys = await self.store.apikeys_of(p.uuid)
        ids = [(i.id, i.provider) for i in p.identities]
        users = self.usernames(ids)
        activity = [i.latest_login for i in p.identities if i.latest_login]
        activity += [iso(s.time_last_refreshed) or "" for s in sessions if s.time_last_refreshed]
        activity += [iso(k.latest_activity) or "" for k in keys if k.latest_activity]
        return {
            "uuid": str_uuid(p.uuid),
            "type": p.type,
            "identities": [
                {"id": i.id, "provider": i.provider, "latest_login": i.latest_login}
                for i in p.identities
            ],
            "api_keys": [apikey_info(k) for k in keys],
            "sessions": [
                {
                    "uuid": str_uuid(s.uuid),
                    "expiration_time": iso(s.expiration_time),
                    "revoked": s.revoked,
                }
                for s in sessions
            ],
            "latest_activity": max(activity) if activity else None,
            "roles": sorted(set().union(*(self.access.roles_of(u) for u in users))),
            "scopes": sorted(set().union(*(self.access.scopes_of(u) for u in users))),
            "api_key_scopes": None,
        }


def str_uuid(hex32: str) -> str:
    """`xxxxxxxx-xxxx-...` as the reference shows uuids (stored as 32 hex digits)."""
    h = hex32.replace("-", "")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if len(h) == 32 else hex32


def hex_uuid(text: str) -> str | None:
    """32 hex digits from a uuid with or without dashes; None if it is not one."""
    h = text.replace("-", "").lower()
    if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
        return None
    return h


def secret_of(key: str) -> bytes:
    """An API key's secret; Unauthorized if it cannot be one (keys are hex)."""
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise Unauthorized("Invalid API key") from None


def apikey_info(k: rec.ApiKeyRecord) -> dict[str, Any]:
    return {
        "first_eight": k.first_eight,
        "expiration_time": iso(k.expiration_time),
        "note": k.note,
        "scopes": k.scopes,
        "latest_activity": iso(k.latest_activity),
    }
