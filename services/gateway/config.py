"""The gateway's auth configuration: a YAML file, a key file, the environment, the CLI.

A config file (never in the repository) looks like:

    allow_anonymous_access: false      # true: no key gives `anonymous_scopes`
    anonymous_scopes: [read:status]    # read scopes only
    api_keys:
      - key_sha256: 5e88...            # `sha256sum` of the key; or `key:` in clear
        user: alice                    # the `user` the gateway sets on her requests
        roles: [user]                  # admin, expert, advanced, user, observer
        scopes: [read:console]         # added to the roles' scopes
        user_group: primary
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.gateway.auth import (
    DEFAULT_USER_GROUP,
    READ_SCOPES,
    ApiKey,
    Authenticates,
    Authenticator,
    Principal,
    key_digest,
    scopes_of,
)
from services.gateway.authstore import AuthStore
from services.gateway.hsconfig import ConfigError, is_reference, load_reference, read_config

SINGLE_USER_KEY_ENV = "QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY"  # the name bluesky-httpserver uses
CONFIG_ENV = "QSERVER_HTTP_CONFIG"
REFERENCE_CONFIG_ENV = "QSERVER_HTTP_SERVER_CONFIG"  # bluesky-httpserver's name, also read


@dataclass(frozen=True, kw_only=True)
class AuthOptions:
    config_file: Path | None = None
    single_user_key_file: Path | None = None
    single_user_key: str | None = None
    allow_anonymous: bool = False
    no_auth: bool = False


def _api_key(entry: Any, n: int) -> ApiKey:
    if not isinstance(entry, dict) or "user" not in entry:
        raise ConfigError(f"api_keys[{n}] must be a mapping with at least 'user' and a key")
    if "key_sha256" in entry:
        digest = str(entry["key_sha256"]).lower()
    elif "key" in entry:
        digest = key_digest(str(entry["key"]))
    else:
        raise ConfigError(f"api_keys[{n}] ({entry['user']}) has neither 'key_sha256' nor 'key'")
    try:
        scopes = scopes_of(entry.get("roles", []), entry.get("scopes", []))
    except ValueError as e:
        raise ConfigError(f"api_keys[{n}] ({entry['user']}): {e}") from None
    group = str(entry.get("user_group", DEFAULT_USER_GROUP))
    roles = tuple(str(r) for r in entry.get("roles", []))
    return ApiKey(digest, Principal(str(entry["user"]), scopes, group, roles))


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"cannot read the gateway config {path}: no such file or directory")
    return read_config(path)


def _single_user_key(opts: AuthOptions) -> str | None:
    if opts.single_user_key_file is not None:
        try:
            key = opts.single_user_key_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the single-user key file: {e}") from None
    else:
        key = opts.single_user_key or os.environ.get(SINGLE_USER_KEY_ENV, "").strip()
    if key and not key.isalnum():
        raise ConfigError("the single-user API key must be alphanumeric")
    return key or None


def no_store() -> AuthStore:
    raise ConfigError("logins need the gateway's NATS connection (a store of sessions)")


def load_authenticator(
    opts: AuthOptions, store: Callable[[], AuthStore] = no_store
) -> Authenticates:
    """Build the authenticator from the options; ConfigError if nobody could get in.

    A bluesky-httpserver configuration file gives logins (their state in `store()`); the
    gateway's own file gives API keys.
    """
    if opts.no_auth:
        return Authenticator(open_access=True)
    path = opts.config_file or (
        Path(env)
        if (env := os.environ.get(CONFIG_ENV) or os.environ.get(REFERENCE_CONFIG_ENV))
        else None
    )
    data = _read_file(path) if path else {}
    if is_reference(data):
        if opts.allow_anonymous:
            data.setdefault("authentication", {})
            data["authentication"] = {
                **(data["authentication"] or {}),
                "allow_anonymous_access": True,
            }
        return load_reference(data, store)
    unknown = set(data) - {"api_keys", "allow_anonymous_access", "anonymous_scopes"}
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in the gateway config {path}: {sorted(unknown)} (the gateway's "
            "own file has api_keys, allow_anonymous_access, anonymous_scopes; bluesky-httpserver's "
            "has authentication, api_access, resource_access)"
        )
    keys = tuple(_api_key(e, n) for n, e in enumerate(data.get("api_keys") or []))
    anonymous = None
    if opts.allow_anonymous or data.get("allow_anonymous_access"):
        try:
            anonymous = scopes_of([], data.get("anonymous_scopes", ["read:status"]))
        except ValueError as e:
            raise ConfigError(f"anonymous_scopes: {e}") from None
        if anonymous - READ_SCOPES:
            raise ConfigError(f"anonymous access is read-only: {sorted(anonymous - READ_SCOPES)}")
    single = _single_user_key(opts)
    if not keys and single is None and anonymous is None:
        raise ConfigError(
            "no API key is configured: give --config, --single-user-key-file or "
            f"${SINGLE_USER_KEY_ENV}, or run with --no-auth on a closed machine"
        )
    return Authenticator(keys=keys, single_user_key=single, anonymous_scopes=anonymous)
