"""Login providers, configured as bluesky-httpserver's authenticators are.

Password providers answer `authenticate(username, password)` with the user name or None;
external ones (OIDC) answer `authenticate_code(code)`. The protocol work is done by
libraries: python-pam (PAM), python-ldap (LDAP, in `ldap_provider`), Authlib (the OIDC code
exchange) and PyJWT (the ID token's signature and claims).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["password", "external"]


class ProviderError(ValueError):
    """A provider's configuration is wrong; the message names the setting."""


def check_args(kind: str, args: Any, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    args = args or {}
    if not isinstance(args, Mapping):
        raise ProviderError(f"{kind}: 'args' must be a mapping, not {args!r}")
    unknown = set(args) - required - optional
    if unknown:
        raise ProviderError(
            f"{kind}: unsupported argument(s) {sorted(unknown)} "
            f"(supported: {', '.join(sorted(required | optional))})"
        )
    missing = required - set(args)
    if missing:
        raise ProviderError(f"{kind}: missing argument(s) {sorted(missing)}")
    return args


@dataclass(frozen=True)
class DictionaryProvider:
    """Passwords from the configuration (bluesky-httpserver's 'toy' provider): tests and demos."""

    users_to_passwords: Mapping[str, str]
    mode: Mode = "password"

    async def authenticate(self, username: str, password: str) -> str | None:
        true_password = self.users_to_passwords.get(username)
        if not true_password:
            return None
        if hmac.compare_digest(true_password.encode(), password.encode()):
            return username
        return None


@dataclass(frozen=True)
class DummyProvider:
    """Any user name with any password: for demos only (logged loudly at start)."""

    mode: Mode = "password"

    async def authenticate(self, username: str, password: str) -> str | None:
        return username


@dataclass(frozen=True)
class PamProvider:
    """The machine's PAM stack (service `login` by default), through python-pam."""

    service: str = "login"
    mode: Mode = "password"

    async def authenticate(self, username: str, password: str) -> str | None:
        import pam  # python-pam: libpam through ctypes

        def check() -> bool:
            p = pam.pam()
            ok = bool(p.authenticate(username, password, service=self.service))
            if not ok:
                logger.info("PAM refused %r: %s (%s)", username, p.reason, p.code)
            return ok

        # libpam blocks (pam_unix sleeps ~2 s after a failure): off the event loop.
        return username if await asyncio.to_thread(check) else None


def dictionary_provider(args: Any) -> DictionaryProvider:
    a = check_args("DictionaryAuthenticator", args, {"users_to_passwords"}, set())
    users = a["users_to_passwords"]
    if not isinstance(users, Mapping) or not all(
        isinstance(u, str) and isinstance(p, str | int) for u, p in users.items()
    ):
        raise ProviderError(
            "DictionaryAuthenticator: users_to_passwords must map names to passwords"
        )
    return DictionaryProvider({u: str(p) for u, p in users.items()})


def dummy_provider(args: Any) -> DummyProvider:
    check_args("DummyAuthenticator", args, set(), set())
    logger.warning("DummyAuthenticator: any user name with any password gets in (demos only)")
    return DummyProvider()


def pam_provider(args: Any) -> PamProvider:
    a = check_args("PAMAuthenticator", args, set(), {"service"})
    service = a.get("service", "login")
    if not isinstance(service, str) or not service:
        raise ProviderError("PAMAuthenticator: service must be a PAM service name")
    return PamProvider(service)
