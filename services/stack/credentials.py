"""The embedded stack's NATS users: an nkey per role, made at first start, readable by its owner.

Each role of `nats_permissions` gets an nkey seed file (mode 0600, in a 0700 directory of
the data dir), made once and kept, so clients keep working across restarts. The nats-server
config (mode 0600 too) holds only the public keys: with nkeys the server sends a nonce that
the client signs, so no secret crosses the connection and nothing a listener on the port
could learn would let it in later (ADR 11).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from qserver.connect import ENV_VARS, NatsAuth
from services.stack.nats_permissions import inbox_prefix, render_nkey_users, roles

# The role of people and programs on this machine: `qserver`, scripts, notebooks.
CLIENT_ROLE = "operator"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_private(path: Path, data: bytes) -> None:
    """Write `path` whole (write and rename), readable by this user only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class StackKeys:
    """The seed files of the stack's NATS users, one per role, in `directory`."""

    directory: Path

    def seed_file(self, role: str) -> Path:
        return self.directory / f"{role}.nk"

    def public_key(self, role: str) -> str:
        seed = bytearray(self.seed_file(role).read_bytes().strip())
        return nkeys.from_seed(seed).public_key.decode()  # type: ignore[no-any-return]

    def auth(self, role: str) -> NatsAuth:
        return NatsAuth(nkey=str(self.seed_file(role)), inbox_prefix=inbox_prefix(role))

    def environ(self, role: str) -> dict[str, str]:
        """A child's NATS settings: this role's, and none of the caller's (emptied)."""
        return {**dict.fromkeys(ENV_VARS.values(), ""), **self.auth(role).environ()}

    def server_config(self, prefix: str) -> str:
        header = (
            "# The embedded stack's NATS users (services.stack.credentials): one nkey per role,\n"
            "# permissions from services.stack.nats_permissions. Rewritten at every start;\n"
            "# no anonymous user, so a client without a key is refused.\n"
        )
        keys = {r.name: self.public_key(r.name) for r in roles(prefix)}
        return header + render_nkey_users(keys, prefix)


def ensure_keys(directory: Path) -> StackKeys:
    """The role keys in `directory`, made for the roles that have none yet; modes tightened."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, PRIVATE_DIR)
    keys = StackKeys(directory)
    for role in roles():
        path = keys.seed_file(role.name)
        if path.exists():
            os.chmod(path, PRIVATE_FILE)
        else:
            write_private(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    return keys


def write_server_config(path: Path, keys: StackKeys, prefix: str) -> Path:
    """The nats-server config of the stack's users for `prefix` (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, keys.server_config(prefix).encode())
    return path
