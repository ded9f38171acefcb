"""A `qserver stack up` on this machine, as its clients find it: address, prefix and NATS key.

While it runs, the stack holds the lock `stack.lock` in its data dir and writes `stack.json`
(mode 0600) there, naming its NATS URL, its subject prefix and the nkey seed file of its
client user (mode 0600 too). A client with no NATS settings of its own takes them from
there: `qserver status` just works for the OS user who started the stack, and for nobody
else, since only that user can read the files (ADR 11).
"""

from __future__ import annotations

import fcntl
import json
import os
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import platformdirs

from qserver.connect import NatsAuth, servers

DATA_DIR_ENV = "QSERVER_DATA_DIR"
INFO_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def default_data_dir() -> Path:
    """$QSERVER_DATA_DIR, else the per-user data directory (`~/.local/share/qserver`)."""
    given = os.environ.get(DATA_DIR_ENV)
    return Path(given) if given else Path(platformdirs.user_data_dir("qserver"))


def lock_is_held(lock_file: Path) -> bool:
    """Whether a stack holds `lock_file` (the kernel drops the lock when the stack dies)."""
    try:
        with open(lock_file) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no such file, or not ours to read
        return False
    return False


def running_stack(data_dir: Path | None = None) -> dict[str, Any] | None:
    """What the stack running on `data_dir` (default: `default_data_dir()`) says, or None."""
    d = Path(data_dir) if data_dir else default_data_dir()
    if not lock_is_held(d / LOCK_FILE):
        return None
    try:
        info = json.loads((d / INFO_FILE).read_text())
    except (OSError, ValueError):  # starting, stopping, or not ours to read
        return None
    return info if isinstance(info, dict) else None


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
    return (parts.hostname or "localhost"), (parts.port or 4222)


def is_stack_nats(url: str, stack: dict[str, Any]) -> bool:
    """Whether `url` names the stack's NATS: its URL, or a loopback address on its port."""
    own = stack.get("nats_url")
    if not isinstance(own, str) or not own:
        return False
    if url == own:
        return True
    own_host, own_port = _host_port(own)
    return own_host in LOOPBACK and any(
        host in LOOPBACK and port == own_port for host, port in map(_host_port, servers(url))
    )


def stack_credentials(url: str, auth: NatsAuth, stack: dict[str, Any] | None = None) -> NatsAuth:
    """`auth`, or, when it holds no credentials and `url` is a local stack's nats-server, the
    stack's client credentials (its nkey seed file and inbox prefix).

    Only for that server: a key is never offered to another one. `stack` defaults to the
    stack running on the default data dir.
    """
    if auth.has_credentials:
        return auth
    stack = running_stack() if stack is None else stack
    client = (stack or {}).get("nats_client")
    if not stack or not isinstance(client, dict) or not is_stack_nats(url, stack):
        return auth
    return replace(auth, nkey=client.get("nkey"), inbox_prefix=client.get("inbox_prefix"))
