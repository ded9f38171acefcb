"""Principals, sessions and API keys in a JetStream KV bucket that every gateway shares.

Every write is a compare-and-set on the key's revision, so two gateways never lose each
other's updates (the first login of a user on two gateways at once makes one principal).
Reads that authenticate a request go through a short cache (`CACHE_S`): a revoked session
or a deleted key stops working on every gateway within that time, without a watcher that
could silently fall behind (ADR 23).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from qserver.client import Client
from qserver.jsutil import default_replicas, ensure_key_value, kv_scan
from qserver.protocol import auth as rec
from services.gateway.errors import Unavailable

logger = logging.getLogger(__name__)

CACHE_S = 0.5  # how long a read that authenticates a request is trusted (revocation bound)
ACTIVITY_EVERY_S = 60.0  # an API key's `latest_activity` is written at most this often
CAS_TRIES = 20
R = TypeVar("R", bound=rec.Record)
T = TypeVar("T")


def identity_key(provider: str, user_id: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]: user names (e-mail addresses...) are hex-encoded.
    return f"{rec.IDENTITY}.{provider}.{user_id.encode().hex()}"


def secret_digest(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


class AuthStore:
    """The auth bucket of one queue server, reached through the gateway's NATS connection."""

    def __init__(self, client: Callable[[], Client], bucket: str, timeout: float = 5.0) -> None:
        self._client = client
        self._bucket = bucket
        self._timeout = timeout
        self._kv: KeyValue | None = None
        self._js: JetStreamContext | None = None
        self._kv_nc: Any = None
        self._cache: dict[str, tuple[float, Any]] = {}
        self._touched: dict[str, float] = {}

    # ----- plumbing -----

    async def kv(self) -> KeyValue:
        client = self._client()  # Unavailable (503) while NATS is away
        if self._kv is None or self._kv_nc is not client.nc:
            js = client.nc.jetstream(timeout=self._timeout)
            try:
                self._kv = await asyncio.wait_for(
                    ensure_key_value(js, self._bucket, replicas=default_replicas()), self._timeout
                )
            except (TimeoutError, nats.errors.Error) as e:
                raise Unavailable(
                    f"The login store {self._bucket} cannot be opened ({e!r}): is JetStream "
                    "there, and may the gateway's NATS user use the bucket? (deploy.md)"
                ) from None
            self._js = js
            self._kv_nc = client.nc
        return self._kv

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(op(), self._timeout)
        except (TimeoutError, nats.errors.Error) as e:
            raise Unavailable(
                f"The login store ({self._bucket}) did not answer {what}: {e!r}"
            ) from None

    async def _get(self, key: str, rtype: type[R]) -> tuple[R, int] | None:
        kv = await self.kv()

        async def get() -> tuple[R, int] | None:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            if entry.value is None:
                return None
            return msgspec.json.decode(entry.value, type=rtype), entry.revision or 0

        return await self._call(f"a read of {key}", get)

    async def _cached(self, key: str, rtype: type[R]) -> R | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            value: R | None = hit[1]
            return value
        got = await self._get(key, rtype)
        value = got[0] if got else None
        self._cache[key] = (now + CACHE_S, value)
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return value

    def _forget(self, key: str) -> None:
        self._cache.pop(key, None)

    async def _create(self, key: str, value: rec.Record) -> bool:
        """Write `key` if it does not exist yet; False if it does."""
        kv = await self.kv()

        async def create() -> bool:
            try:
                await kv.create(key, msgspec.json.encode(value))
            except KeyWrongLastSequenceError:
                return False
            return True

        return await self._call(f"a write of {key}", create)

    async def _change(self, key: str, rtype: type[R], change: Callable[[R], R | None]) -> R | None:
        """Read, change and write back `key` with a compare-and-set; None if it is gone.

        `change` returns the new value, or None to leave it as it is.
        """
        kv = await self.kv()
        for _ in range(CAS_TRIES):
            got = await self._get(key, rtype)
            if got is None:
                return None
            value, revision = got
            new = change(value)
            if new is None:
                return value

            async def update(new: R = new, revision: int = revision) -> bool:
                try:
                    await kv.update(key, msgspec.json.encode(new), last=revision)
                except KeyWrongLastSequenceError:
                    return False
                return True

            if await self._call(f"a write of {key}", update):
                self._forget(key)
                return new
        raise Unavailable(f"The login store kept changing under a write of {key}: try again")

    async def _delete(self, key: str) -> None:
        kv = await self.kv()
        await self._call(f"a delete of {key}", lambda: kv.delete(key))
        self._forget(key)

    async def _scan(self, prefix: str, rtype: type[R]) -> list[tuple[str, R]]:
        """(key, record) of every record whose key starts with `prefix.`."""
        await self.kv()
        js = self._js
        assert js is not None

        async def scan() -> list[tuple[str, R]]:
            found = await kv_scan(js, self._bucket, prefix)
            return [(key, msgspec.json.decode(value, type=rtype)) for key, value in found]

        return await self._call(f"a scan of {prefix}", scan)

    # ----- principals and identities -----

    async def principal(self, uuid: str, *, cached: bool = False) -> rec.PrincipalRecord | None:
        key = f"{rec.PRINCIPAL}.{uuid}"
        if cached:
            return await self._cached(key, rec.PrincipalRecord)
        got = await self._get(key, rec.PrincipalRecord)
        return got[0] if got else None

    async def principals(self) -> list[rec.PrincipalRecord]:
        return [p for _, p in await self._scan(rec.PRINCIPAL, rec.PrincipalRecord)]

    async def login(self, provider: str, user_id: str, now: str) -> rec.PrincipalRecord:
        """The principal of this identity (made at its first login), with `latest_login` set."""
        ikey = identity_key(provider, user_id)
        for _ in range(CAS_TRIES):
            got = await self._get(ikey, rec.IdentityRecord)
            if got is None:
                uuid = uuid_module.uuid4().hex
                principal = rec.PrincipalRecord(
                    uuid=uuid, identities=[rec.Identity(id=user_id, provider=provider)]
                )
                # The principal first, then the index: a crash between the two leaves an
                # orphan principal, never an index to nothing.
                await self._create(f"{rec.PRINCIPAL}.{uuid}", principal)
                if not await self._create(ikey, rec.IdentityRecord(principal=uuid)):
                    await self._delete(f"{rec.PRINCIPAL}.{uuid}")
                    continue  # another gateway won the race: use its principal
                uuid_of = uuid
            else:
                uuid_of = got[0].principal

            def stamp(p: rec.PrincipalRecord) -> rec.PrincipalRecord:
                ids = [
                    rec.Identity(id=i.id, provider=i.provider, latest_login=now)
                    if (i.id, i.provider) == (user_id, provider)
                    else i
                    for i in p.identities
                ]
                return rec.PrincipalRecord(uuid=p.uuid, type=p.type, identities=ids)

            principal_now = await self._change(
                f"{rec.PRINCIPAL}.{uuid_of}", rec.PrincipalRecord, stamp
            )
            if principal_now is not None:
                return principal_now
            await self._delete(ikey)  # an index to a principal that is gone: make a new one
        raise Unavailable("The login store kept changing during a login: try again")

    # ----- sessions -----

    async def new_session(self, principal: str, max_age: float) -> rec.SessionRecord:
        session = rec.SessionRecord(
            uuid=uuid_module.uuid4().hex, principal=principal, expiration_time=time.time() + max_age
        )
        await self._create(f"{rec.SESSION}.{session.uuid}", session)
        return session

    async def session(self, sid: str, *, cached: bool = False) -> rec.SessionRecord | None:
        key = f"{rec.SESSION}.{sid}"
        if cached:
            return await self._cached(key, rec.SessionRecord)
        got = await self._get(key, rec.SessionRecord)
        return got[0] if got else None

    async def refresh_session(self, sid: str) -> rec.SessionRecord | None:
        """Count a refresh of a valid session; None if it is gone, revoked or expired."""
        now = time.time()

        def bump(s: rec.SessionRecord) -> rec.SessionRecord | None:
            if s.revoked or s.expiration_time < now:
                return None
            return msgspec.structs.replace(
                s, time_last_refreshed=now, refresh_count=s.refresh_count + 1
            )

        s = await self._change(f"{rec.SESSION}.{sid}", rec.SessionRecord, bump)
        if s is None or s.revoked or s.expiration_time < now:
            return None
        return s

    async def revoke_session(self, sid: str) -> None:
        await self._change(
            f"{rec.SESSION}.{sid}",
            rec.SessionRecord,
            lambda s: None if s.revoked else msgspec.structs.replace(s, revoked=True),
        )

    async def sessions_of(self, principal: str) -> list[rec.SessionRecord]:
        now = time.time()
        out = []
        for _, s in await self._scan(rec.SESSION, rec.SessionRecord):
            if s.expiration_time < now:
                await self._delete(f"{rec.SESSION}.{s.uuid}")  # purged, as the reference does
            elif s.principal == principal:
                out.append(s)
        return out

    # ----- API keys -----

    async def new_apikey(
        self, principal: str, scopes: list[str], expires_in: int | None, note: str | None
    ) -> tuple[str, rec.ApiKeyRecord]:
        """A new key: its secret (hex, shown once) and its record (stored under its hash)."""
        # 32 bytes of entropy plus 4, since the first eight hex digits are stored in clear.
        secret = secrets.token_bytes(4 + 32)
        record = rec.ApiKeyRecord(
            first_eight=secret.hex()[:8],
            principal=principal,
            scopes=scopes,
            expiration_time=None if expires_in is None else time.time() + expires_in,
            note=note,
        )
        await self._create(f"{rec.APIKEY}.{secret_digest(secret)}", record)
        return secret.hex(), record

    async def apikey(self, secret: bytes) -> rec.ApiKeyRecord | None:
        """The valid key with this secret (expired keys are deleted), from the short cache."""
        key = f"{rec.APIKEY}.{secret_digest(secret)}"
        record = await self._cached(key, rec.ApiKeyRecord)
        if record is None:
            return None
        if record.expiration_time is not None and record.expiration_time < time.time():
            await self._delete(key)
            return None
        return record

    async def touch_apikey(self, secret: bytes) -> None:
        """Record the key's use now and then (not on every request: it is a KV write)."""
        key = f"{rec.APIKEY}.{secret_digest(secret)}"
        now = time.time()
        if now - self._touched.get(key, 0.0) < ACTIVITY_EVERY_S:
            return
        self._touched[key] = now
        await self._change(
            key, rec.ApiKeyRecord, lambda k: msgspec.structs.replace(k, latest_activity=now)
        )

    async def apikeys_of(self, principal: str) -> list[rec.ApiKeyRecord]:
        now = time.time()
        keys = await self._scan(rec.APIKEY, rec.ApiKeyRecord)
        return [
            k
            for _, k in keys
            if k.principal == principal and (k.expiration_time is None or k.expiration_time > now)
        ]

    async def delete_apikey(self, principal: str, first_eight: str) -> bool:
        """Delete the principal's key that starts with `first_eight`; False if none."""
        for key, k in await self._scan(rec.APIKEY, rec.ApiKeyRecord):
            if k.principal == principal and k.first_eight == first_eight[:8]:
                await self._delete(key)
                return True
        return False

    # ----- the shared signing key -----

    async def signing_secret(self) -> str:
        """The token key the gateways share when none is configured (made by the first)."""
        got = await self._get(rec.SIGNING_SECRET, rec.SigningSecret)
        if got is not None:
            return got[0].key
        await self._create(rec.SIGNING_SECRET, rec.SigningSecret(key=secrets.token_hex(32)))
        got = await self._get(rec.SIGNING_SECRET, rec.SigningSecret)
        if got is None:
            raise Unavailable("The login store lost the signing key it just wrote")
        return got[0].key
