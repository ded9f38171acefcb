"""CurveZMQ keys: the server's key pair, and the client keys that map to users.

Keys are z85-encoded 40-character strings, as `qserver-zmq-keys` of bluesky-queueserver makes
them (`python -m services.zmq_bridge.keys` makes them too). The client keys file (YAML):

    clients:
      - public_key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        user: alice              # replaces the `user` of her requests
        user_group: primary      # replaces their `user_group`
        access: control          # observe | control | admin (default control)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
import zmq
from zmq.utils import z85

from qserver.errors import QServerError

Access = Literal["observe", "control", "admin"]
ACCESS_LEVELS: tuple[Access, ...] = ("observe", "control", "admin")
# The client key pair that bluesky-queueserver's clients all use (it is in their source):
# a request made with it proves nothing about who made it.
REFERENCE_CLIENT_PUBLIC_KEY = "wt8[6a8eoXFRVL<l2JBbOzs(hcI%kRBIr0Do/eLC"


class BadKey(QServerError):
    """A key or the client keys file cannot be used; the message says which and why."""

    code = "bad_key"


def public_key_of(private_key: str) -> str:
    """The public key of a z85 private key; BadKey if it is not one."""
    try:
        return zmq.curve_public(private_key.strip().encode()).decode()  # type: ignore[no-any-return]
    except (ValueError, zmq.ZMQError, UnicodeError) as e:
        raise BadKey(
            f"invalid 0MQ key: a key is a 40-character z85 string ({type(e).__name__})"
        ) from None


def check_key(key: str, what: str) -> str:
    """`key` stripped, if it is a 40-character z85 string (public or private alike)."""
    key = key.strip()
    if len(key) != 40:
        raise BadKey(f"{what} must be a 40-character z85 string, not {len(key)} characters")
    try:
        z85.decode(key)
    except (ValueError, KeyError, IndexError):
        raise BadKey(f"{what} is not z85-encoded") from None
    return key


@dataclass(frozen=True)
class ClientKey:
    """A client allowed by its CurveZMQ public key, and who it is."""

    public_key: str
    user: str
    user_group: str
    access: Access = "control"


def _client(entry: Any, n: int) -> ClientKey:
    where = f"clients[{n}]"
    if not isinstance(entry, dict):
        raise BadKey(f"{where} must be a mapping with public_key, user and user_group")
    missing = [k for k in ("public_key", "user", "user_group") if not entry.get(k)]
    if missing:
        raise BadKey(f"{where} lacks {', '.join(missing)}")
    unknown = set(entry) - {"public_key", "user", "user_group", "access"}
    if unknown:
        raise BadKey(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    access = entry.get("access", "control")
    if access not in ACCESS_LEVELS:
        raise BadKey(f"{where}: access must be one of {', '.join(ACCESS_LEVELS)}")
    key = check_key(str(entry["public_key"]), f"{where}.public_key")
    return ClientKey(key, str(entry["user"]), str(entry["user_group"]), access)


def load_client_keys(path: Path) -> tuple[ClientKey, ...]:
    """The clients of a keys file; BadKey naming the entry that is wrong."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BadKey(f"cannot read the 0MQ client keys file {path}: {e}") from None
    if not isinstance(data, dict) or set(data) - {"clients"}:
        raise BadKey(f"the 0MQ client keys file {path} must be a mapping with 'clients'")
    clients = tuple(_client(e, n) for n, e in enumerate(data.get("clients") or []))
    seen: set[str] = set()
    for c in clients:
        if c.public_key in seen:
            raise BadKey(f"the 0MQ client keys file lists {c.public_key} twice")
        seen.add(c.public_key)
    return clients


def _joined(argv: list[str]) -> list[str]:
    """`--zmq-private-key KEY` as `--zmq-private-key=KEY`: a Z85 key may begin with `-`
    (1 in 85 do), which argparse would take for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        value = next(it, None) if arg == "--zmq-private-key" else None
        out.append(arg if value is None else f"{arg}={value}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m services.zmq_bridge.keys",
        description="Make a CurveZMQ key pair for the 0MQ bridge (as qserver-zmq-keys does).",
    )
    p.add_argument(
        "--zmq-private-key",
        default=None,
        help="print the public key of this private key instead of making a new pair",
    )
    args = p.parse_args(_joined(sys.argv[1:] if argv is None else argv))
    try:
        if args.zmq_private_key:
            private = check_key(args.zmq_private_key, "the private key")
            public = public_key_of(private)
        else:
            pub, sec = zmq.curve_keypair()
            public, private = pub.decode(), sec.decode()
    except BadKey as e:
        raise SystemExit(f"error: {e.msg}") from None
    print(f"Private key (QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER, the bridge): {private}")
    print(f"Public key (QSERVER_ZMQ_PUBLIC_KEY, clients):                 {public}")


if __name__ == "__main__":
    main()
