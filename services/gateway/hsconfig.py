"""bluesky-httpserver's configuration file, read as it is: `authentication`, `api_access`,
`resource_access`.

A facility moves its existing file over. `$VARIABLES` are expanded from the environment, as
the reference does; the reference's environment variables fill what the file leaves out.
Settings this gateway does not support are named, all at once, in a ConfigError, with what
to use instead: never silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from services.gateway.access import API_POLICIES, PolicyError, default_group
from services.gateway.authstore import AuthStore
from services.gateway.ldap_provider import ldap_provider
from services.gateway.logins import LoginAuthenticator, LoginSettings
from services.gateway.oidc_provider import oidc_provider
from services.gateway.providers import (
    ProviderError,
    dictionary_provider,
    dummy_provider,
    pam_provider,
)

SECTIONS = {
    "authentication",
    "api_access",
    "resource_access",
    "qserver_zmq_configuration",
    "server_configuration",
    "database",
    "allow_origins",
    "uvicorn",
    "metrics",
}
INSTEAD = {
    "qserver_zmq_configuration": "this gateway reaches the queue server over NATS: give "
    "--nats-url and --prefix",
    "server_configuration": "custom routers and modules are FastAPI code; this gateway loads none",
    "database": "logins are kept in JetStream (the bucket QS_<PREFIX>_AUTH), shared by every "
    "gateway, not in a database",
    "allow_origins": "cross-origin requests (CORS) are not supported",
    "uvicorn": "give the gateway's --host and --port (TLS: a proxy in front)",
    "metrics": "the gateway always serves /metrics (scope read:status)",
}
AUTH_KEYS = {
    "providers",
    "allow_anonymous_access",
    "secret_keys",
    "single_user_api_key",
    "access_token_max_age",
    "refresh_token_max_age",
    "session_max_age",
}
AUTHENTICATORS_MODULE = "bluesky_httpserver.authenticators"
POLICIES_MODULE = "bluesky_httpserver.authorization"
_PROVIDER_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


def is_reference(data: Mapping[str, Any]) -> bool:
    """Whether a config file is bluesky-httpserver's (rather than the gateway's own)."""
    return bool(set(data) & SECTIONS)


def expand(value: Any) -> Any:
    """`$VAR` and `${VAR}` in every string, from the environment (as the reference does)."""
    if isinstance(value, Mapping):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, str):
        return os.path.expandvars(value)
    return value


def read_config(path: Path) -> dict[str, Any]:
    """A YAML file, or a directory of them (each section in one file only)."""
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml"))
        if path.is_dir()
        else [path]
    )
    merged: dict[str, Any] = {}
    source: dict[str, Path] = {}
    for f in files:
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read the gateway config {f}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the gateway config {f} must be a mapping")
        for key, value in data.items():
            if key in merged and key != "allow_origins":
                raise ConfigError(
                    f"'{key}' can only be specified in one file: found in {source[key]} and {f}"
                )
            merged[key], source[key] = value, f
    return merged


def unsupported(data: Mapping[str, Any]) -> list[str]:
    """Every setting that this gateway does not support, with what to do instead."""
    out = []
    for key, value in data.items():
        if key not in SECTIONS:
            out.append(f"'{key}' (not a bluesky-httpserver setting either)")
        elif key in INSTEAD and value not in (None, {}, []):
            out.append(f"'{key}': {INSTEAD[key]}")
    auth = data.get("authentication") or {}
    if not isinstance(auth, Mapping):
        out.append("'authentication' must be a mapping")
    else:
        out += [f"'authentication: {k}' (unknown setting)" for k in sorted(set(auth) - AUTH_KEYS)]
    return out


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def _seconds(auth: Mapping[str, Any], key: str, env: str, default: float) -> float:
    value = auth.get(key)
    if value is None:
        value = _env_float(env)
    if value is None:
        return default
    if not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"authentication: {key} must be a positive number of seconds")
    return float(value)


PROVIDERS: dict[str, Callable[[Any], Any]] = {
    "DictionaryAuthenticator": dictionary_provider,
    "DummyAuthenticator": dummy_provider,
    "PAMAuthenticator": pam_provider,
    "LDAPAuthenticator": ldap_provider,
    "OIDCAuthenticator": oidc_provider,
}


def _class_name(path: Any, module: str, kind: str, known: Mapping[str, Any]) -> str:
    if not isinstance(path, str):
        raise ConfigError(f"{kind} must be an import path such as '{module}:{next(iter(known))}'")
    mod, sep, name = path.replace(":", ".").rpartition(".")
    if not sep or not (mod == module or mod.startswith(module + ".")) or name not in known:
        raise ConfigError(
            f"{kind} '{path}' is not supported: this gateway offers "
            f"{', '.join(f'{module}:{n}' for n in known)}"
        )
    return name


def providers_of(auth: Mapping[str, Any]) -> dict[str, Any]:
    specs = auth.get("providers") or []
    if not isinstance(specs, list):
        raise ConfigError("authentication: providers must be a list")
    out: dict[str, Any] = {}
    for n, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "provider" not in spec or "authenticator" not in spec:
            raise ConfigError(
                f"authentication: providers[{n}] needs 'provider' and 'authenticator'"
            )
        extra = set(spec) - {"provider", "authenticator", "args"}
        if extra:
            raise ConfigError(f"authentication: providers[{n}]: unknown setting(s) {sorted(extra)}")
        name = spec["provider"]
        if not isinstance(name, str) or not _PROVIDER_RE.match(name):
            raise ConfigError(f"authentication: provider name {name!r} must match ^[a-zA-Z0-9_-]+$")
        if name in out:
            raise ConfigError(f"authentication: the provider name '{name}' is used twice")
        cls = _class_name(spec["authenticator"], AUTHENTICATORS_MODULE, "authenticator", PROVIDERS)
        try:
            out[name] = PROVIDERS[cls](spec.get("args"))
        except ProviderError as e:
            raise ConfigError(f"authentication: provider '{name}': {e}") from None
    return out


def _policy(section: Any, kind: str, known: Mapping[str, Any], default: str) -> tuple[str, Any]:
    section = section or {}
    if not isinstance(section, Mapping) or set(section) - {"policy", "args"}:
        raise ConfigError(f"'{kind}' takes only 'policy' and 'args'")
    path = section.get("policy", f"{POLICIES_MODULE}:{default}")
    return _class_name(path, POLICIES_MODULE, f"{kind} policy", known), section.get("args")


def settings_of(data: Mapping[str, Any], has_providers: bool) -> dict[str, Any]:
    auth = data.get("authentication") or {}
    keys = auth.get("secret_keys")
    if keys is None and os.environ.get("QSERVER_HTTP_SERVER_SERVER_SECRET_KEYS"):
        keys = os.environ["QSERVER_HTTP_SERVER_SERVER_SECRET_KEYS"].split(";")
    if keys is not None and (
        not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys)
    ):
        raise ConfigError("authentication: secret_keys must be a list of strings")
    anonymous = auth.get("allow_anonymous_access")
    if anonymous is None:
        anonymous = bool(int(os.environ.get("QSERVER_HTTP_SERVER_ALLOW_ANONYMOUS_ACCESS", "0")))
    single = auth.get("single_user_api_key") or os.environ.get(
        "QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY"
    )
    if single is not None and (not isinstance(single, str) or not single.isalnum()):
        raise ConfigError("authentication: single_user_api_key must be alphanumeric")
    if single is None and not has_providers and not anonymous:
        raise ConfigError(
            "nobody could get in: the configuration names no provider, no single_user_api_key "
            "($QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY) and no allow_anonymous_access"
        )
    return {
        "allow_anonymous_access": bool(anonymous),
        "secret_keys": tuple(keys or ()),
        "single_user_api_key": single,
        "access_token_max_age": _seconds(
            auth, "access_token_max_age", "QSERVER_HTTP_SERVER_ACCESS_TOKEN_MAX_AGE", 15 * 60
        ),
        "refresh_token_max_age": _seconds(
            auth, "refresh_token_max_age", "QSERVER_HTTP_SERVER_REFRESH_TOKEN_MAX_AGE", 7 * 86400
        ),
        "session_max_age": _seconds(
            auth, "session_max_age", "QSERVER_HTTP_SERVER_SESSION_MAX_AGE", 365 * 86400
        ),
    }


def load_reference(data: Mapping[str, Any], store: Callable[[], AuthStore]) -> LoginAuthenticator:
    """The authenticator of a bluesky-httpserver configuration."""
    data = expand(data)
    problems = unsupported(data)
    if problems:
        raise ConfigError(
            "the gateway does not support these settings of the configuration:\n  "
            + "\n  ".join(problems)
        )
    auth = data.get("authentication") or {}
    providers = providers_of(auth)
    name, args = _policy(
        data.get("api_access"), "api_access", API_POLICIES, "BasicAPIAccessControl"
    )
    group_policies = {"DefaultResourceAccessControl": default_group}
    gname, gargs = _policy(
        data.get("resource_access"),
        "resource_access",
        group_policies,
        "DefaultResourceAccessControl",
    )
    try:
        access = API_POLICIES[name](args)
        group = group_policies[gname](gargs)
    except PolicyError as e:
        raise ConfigError(str(e)) from None
    settings = LoginSettings(providers=providers, **settings_of(data, bool(providers)))
    return LoginAuthenticator(settings, access, group, store())
