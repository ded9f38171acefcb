"""The bridge's settings, checked before anything binds: addresses, keys, who may connect.

Names follow the reference's manager: `QSERVER_ZMQ_CONTROL_ADDRESS_FOR_SERVER`,
`QSERVER_ZMQ_INFO_ADDRESS_FOR_SERVER`, `QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER` (only from the
environment or a file: a key on the command line would show in `ps`),
`QSERVER_ZMQ_ENCODING_FOR_SERVER`.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.zmq_bridge.gate import LocalUsers, Policy
from services.zmq_bridge.keys import BadKey, ClientKey, check_key, load_client_keys, public_key_of
from services.zmq_bridge.peers import is_loopback_host
from services.zmq_bridge.wire import ENCODINGS, Encoding

DEFAULT_CONTROL_ADDR = "tcp://127.0.0.1:60615"
DEFAULT_INFO_ADDR = "tcp://127.0.0.1:60625"
PRIVATE_KEY_ENV = "QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"
OLD_PRIVATE_KEY_ENV = "QSERVER_ZMQ_PRIVATE_KEY"  # the reference's older name
_TCP = re.compile(r"^tcp://(\[[^\]]+\]|[^:/\[\]]+):(\d+)$")


class SettingsError(ValueError):
    """The settings cannot be used; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def ipv6(self) -> bool:
        return self.host.startswith("[")

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def endpoint(text: str, what: str) -> Endpoint:
    m = _TCP.match(text.strip())
    if m is None or not 0 <= int(m.group(2)) <= 65535:
        raise SettingsError(f"{what} must look like tcp://127.0.0.1:60615, not {text!r}")
    return Endpoint(host=m.group(1), port=int(m.group(2)))


@dataclass(frozen=True, kw_only=True)
class Settings:
    control: Endpoint
    info: Endpoint | None  # None: no console feed
    encoding: Encoding = "json"
    private_key: str | None = None
    policy: Policy = field(default_factory=Policy)
    timeout: float = 10.0

    @property
    def public_key(self) -> str | None:
        return public_key_of(self.private_key) if self.private_key else None


def private_key(key_file: Path | None) -> str | None:
    if key_file is not None:
        try:
            text = key_file.read_text()
        except OSError as e:
            raise SettingsError(f"cannot read the 0MQ private key file: {e}") from None
    else:
        text = os.environ.get(PRIVATE_KEY_ENV) or os.environ.get(OLD_PRIVATE_KEY_ENV) or ""
    if not text.strip():
        return None
    try:
        return check_key(text, "the 0MQ private key")
    except BadKey as e:
        raise SettingsError(e.msg) from None


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from the parsed flags (whose defaults come from the environment)."""
    control = endpoint(args.control_addr, "the control address")
    info = endpoint(args.info_addr, "the info address") if args.publish_console else None
    if args.encoding not in ENCODINGS:
        raise SettingsError(f"0MQ encoding must be one of {', '.join(ENCODINGS)}")
    clients: tuple[ClientKey, ...] = ()
    if args.client_keys:
        try:
            clients = load_client_keys(Path(args.client_keys))
        except BadKey as e:
            raise SettingsError(e.msg) from None
    if args.local_users not in ("owner", "any"):
        raise SettingsError("local users must be 'owner' or 'any'")
    local_users: LocalUsers = args.local_users
    settings = Settings(
        control=control,
        info=info,
        encoding=args.encoding,
        private_key=private_key(args.private_key_file),
        policy=Policy(local_users=local_users, clients=clients, info_public=args.info_public),
        timeout=args.timeout,
    )
    check(settings)
    return settings


def check(s: Settings) -> None:
    """Refuse what would serve the queue server beyond this machine without keys."""
    if not s.control.loopback and (s.private_key is None or not s.policy.clients):
        raise SettingsError(
            f"the control address {s.control.url} is not loopback: serving other machines "
            f"needs CurveZMQ (${PRIVATE_KEY_ENV}) and a client keys file (zmq.client_keys) "
            "that maps the clients' public keys to users"
        )
    if s.policy.clients and s.private_key is None:
        raise SettingsError(
            f"client keys are CurveZMQ public keys: they need the server's private key "
            f"(${PRIVATE_KEY_ENV})"
        )
    if s.info is not None and not s.info.loopback and not s.policy.info_public:
        raise SettingsError(
            f"the info address {s.info.url} is not loopback: the console feed has no keys (the "
            "reference's subscribers cannot use any), so serving it beyond this machine must be "
            "asked for with zmq.info_public / --info-public"
        )
    if s.info is not None and (s.info.host, s.info.port) == (s.control.host, s.control.port):
        raise SettingsError("the control and info addresses must differ")
