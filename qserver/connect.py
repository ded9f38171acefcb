"""NATS credentials and TLS: the one place that turns env vars and flags into connect options.

Every service, the environment process, the client and the CLI connect with
`NatsAuth.from_env(...).connect_options()`. Passwords and tokens come only from the
environment (a flag would show them in `ps`); file paths may also be given as flags.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

# Field -> environment variable. Flags are `--nats-<field with dashes>` for FLAG_FIELDS.
ENV_VARS = {
    "user": "QSERVER_NATS_USER",
    "password": "QSERVER_NATS_PASSWORD",
    "token": "QSERVER_NATS_TOKEN",
    "creds": "QSERVER_NATS_CREDS",
    "nkey": "QSERVER_NATS_NKEY",
    "tls_ca": "QSERVER_NATS_TLS_CA",
    "tls_cert": "QSERVER_NATS_TLS_CERT",
    "tls_key": "QSERVER_NATS_TLS_KEY",
    "inbox_prefix": "QSERVER_NATS_INBOX_PREFIX",
}
FLAG_HELP = {
    "user": "NATS user name (password from $QSERVER_NATS_PASSWORD)",
    "creds": "NATS credentials file (.creds: user JWT and nkey seed)",
    "nkey": "file holding the NATS nkey seed of this user",
    "tls_ca": "CA certificate (PEM) to verify the NATS server with",
    "tls_cert": "client certificate (PEM) for NATS TLS (with --nats-tls-key)",
    "tls_key": "private key (PEM) of --nats-tls-cert",
    "inbox_prefix": "where replies come: _INBOX.<user> (default, with a user name) or _INBOX",
}
FILE_FIELDS = ("creds", "nkey", "tls_ca", "tls_cert", "tls_key")
AUTH_METHODS = ("user", "token", "creds", "nkey")
# Replies go to `<inbox_prefix>.<unique>`. Each NATS user may read only its own inboxes
# (`_INBOX.<user>.>`, services.stack.nats_permissions), and services answer only inboxes.
INBOXES = "_INBOX"
_TOKEN = re.compile(r"^[^.*>\s]+$")


def default_inbox_prefix(user: str | None) -> str:
    """`_INBOX.<user>` for a user name that is one subject token, else NATS's `_INBOX`."""
    return f"{INBOXES}.{user}" if user and _TOKEN.match(user) else INBOXES


def servers(url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` as the list nats.py wants (it refuses the string)."""
    return [u.strip() for u in url.split(",") if u.strip()]


class NatsConfigError(ValueError):
    """The NATS credentials or TLS settings are inconsistent; the message names the setting."""


@dataclass(frozen=True, kw_only=True)
class NatsAuth:
    """How to authenticate to NATS and verify it: at most one of user, token, creds, nkey."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inbox_prefix: str | None = None  # None: `default_inbox_prefix(user)`

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: str | None) -> NatsAuth:
        """The settings in `env` (default: os.environ); non-empty `overrides` (flags) win."""
        env = os.environ if env is None else env
        values = {name: env.get(var) or None for name, var in ENV_VARS.items()}
        given = {k: v for k, v in overrides.items() if v}
        if given.keys() & set(AUTH_METHODS):
            # A way to authenticate given as a flag replaces the environment's (and the
            # inbox prefix that went with it).
            values.update(dict.fromkeys((*AUTH_METHODS, "inbox_prefix")))
            if "user" not in given:
                values["password"] = None
        values.update(given)
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> NatsAuth:
        """The environment, overridden by the flags of `add_arguments`."""
        flags = {name: getattr(args, f"nats_{name}", None) for name in FLAG_HELP}
        return cls.from_env(env, **flags)

    @property
    def method(self) -> str:
        """How this connects, in words, without secrets (for messages)."""
        if self.user:
            return f"user '{self.user}'"
        if self.token:
            return "a token"
        if self.creds:
            return f"credentials file {self.creds}"
        if self.nkey:
            return f"nkey seed file {self.nkey}"
        return "no credentials"

    @property
    def has_credentials(self) -> bool:
        return any(getattr(self, n) for n in AUTH_METHODS)

    @property
    def inbox(self) -> str:
        """The inbox prefix to connect with."""
        return self.inbox_prefix or default_inbox_prefix(self.user)

    def check(self) -> None:
        """Raise NatsConfigError naming the setting if the combination cannot work."""
        chosen = [ENV_VARS[n] for n in AUTH_METHODS if getattr(self, n)]
        if len(chosen) > 1:
            raise NatsConfigError(f"give only one way to authenticate to NATS, not {chosen}")
        if self.password and not self.user:
            raise NatsConfigError(f"{ENV_VARS['password']} is set without {ENV_VARS['user']}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise NatsConfigError(
                f"{ENV_VARS['tls_cert']} and {ENV_VARS['tls_key']} go together: set both or none"
            )
        if self.inbox_prefix and not (
            self.inbox_prefix == INBOXES or self.inbox_prefix.startswith(INBOXES + ".")
        ):
            raise NatsConfigError(
                f"{ENV_VARS['inbox_prefix']} must be {INBOXES} or start with {INBOXES}. "
                f"(services answer inboxes only), not {self.inbox_prefix!r}"
            )
        for name in FILE_FIELDS:
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise NatsConfigError(f"{ENV_VARS[name]}: no such file: {path}")

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        import ssl  # here: loading OpenSSL costs the stack's supervisor 2 MiB (ADR 34)

        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        except ssl.SSLError as e:
            raise NatsConfigError(f"{ENV_VARS['tls_ca']}: not a CA certificate ({e})") from None
        if self.tls_cert and self.tls_key:
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except ssl.SSLError as e:
                raise NatsConfigError(
                    f"{ENV_VARS['tls_cert']} / {ENV_VARS['tls_key']}: not a certificate and "
                    f"its key ({e})"
                ) from None
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (empty when nothing is configured)."""
        self.check()
        opts: dict[str, Any] = {}
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token:
            opts["token"] = self.token
        if self.creds:
            opts["user_credentials"] = self.creds
        if self.nkey:
            opts["nkeys_seed"] = self.nkey
        if self.inbox != INBOXES:
            opts["inbox_prefix"] = self.inbox
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts

    def environ(self) -> dict[str, str]:
        """The same settings as environment variables, for a child process."""
        return {ENV_VARS[f.name]: v for f in fields(self) if (v := getattr(self, f.name))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `--nats-*` credential and TLS flags (each also read from its QSERVER_NATS_* var)."""
    for name, text in FLAG_HELP.items():
        p.add_argument(
            f"--nats-{name.replace('_', '-')}",
            dest=f"nats_{name}",
            default=None,
            metavar="PATH"
            if name in FILE_FIELDS
            else "PREFIX"
            if name == "inbox_prefix"
            else "NAME",
            help=f"{text} (${ENV_VARS[name]})",
        )


def connect_options(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """`nats.connect` options from the environment and, if given, a service's parsed flags."""
    auth = NatsAuth.from_args(args) if args is not None else NatsAuth.from_env()
    return auth.connect_options()
