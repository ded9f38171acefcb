"""A `qserver stack up` on this machine, as its clients find it: address, prefix and NATS key.

While it runs, the stack holds the lock `stack.lock` in its data dir and writes `stack.json`
(mode 0600) there, naming its NATS URL, its subject prefix and the nkey seed file of its
client user (mode 0600 too). A client with no NATS settings of its own takes them from
there: `qserver status` just works for the OS user who started the stack, and for nobody
else, since only that user can read the files (ADR 11).

Which stack: the one on `--data-dir` or `$QSERVER_DATA_DIR` when given, else the one on
the default data dir; and a stack started on any other data dir is found by its NATS
address (`$QSERVER_NATS_URL`, `-a`): every stack registers its data dir in the user's
state directory (`~/.local/state/qserver/stacks/`) while it runs (ADR 21). `find_stack`
says where it looked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field, replace
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


def _read_info(d: Path) -> tuple[dict[str, Any] | None, str]:
    """The info of the stack running on `d`, or None and why not (in words)."""
    if not lock_is_held(d / LOCK_FILE):
        return None, "no stack running there"
    try:
        info = json.loads((d / INFO_FILE).read_text())
    except (OSError, ValueError):  # starting, stopping, or not ours to read
        return None, f"a stack holds it, but its {INFO_FILE} cannot be read (starting or stopping?)"
    if not isinstance(info, dict):
        return None, f"its {INFO_FILE} is not an object"
    return info, f"a stack runs there (pid {info.get('pid', '?')}, NATS {info.get('nats_url')})"


@dataclass
class StackLookup:
    """The stack found (its info and data dir), and every place looked at, in words."""

    info: dict[str, Any] | None = None
    data_dir: Path | None = None
    looked_at: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return "; ".join(self.looked_at)


def find_stack(data_dir: Path | None = None, url: str | None = None) -> StackLookup:
    """The local stack a client should use: on `data_dir`, else on `$QSERVER_DATA_DIR` (only
    there, when given), else on the default data dir or, failing that or when `url` names
    another server, the registered stack whose NATS `url` is."""
    out = StackLookup()
    given = os.environ.get(DATA_DIR_ENV)
    if data_dir is not None or given:
        d = Path(data_dir) if data_dir is not None else Path(str(given))
        source = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        info, why = _read_info(d)
        out.looked_at.append(f"{d} ({source}): {why}")
        if info is not None:
            out.info, out.data_dir = info, d
        return out
    d = default_data_dir()
    info, why = _read_info(d)
    if info is not None and url and not is_stack_nats(url, info):
        why += f", not at {url}"
        info = None
    out.looked_at.append(f"{d} (the default data dir): {why}")
    if info is not None:
        out.info, out.data_dir = info, d
        return out
    others = [(p, i) for p, i in registered_stacks() if p != d]
    for path, other in others:
        if url and is_stack_nats(url, other):
            out.info, out.data_dir = other, path
            out.looked_at.append(f"{path} (registered; its NATS is {url}): a stack runs there")
            return out
    running = ", ".join(f"{p} (NATS {i.get('nats_url')})" for p, i in others)
    reg = f"the stacks registered in {registry_dir()}"
    if not others:
        out.looked_at.append(f"{reg}: none running")
    elif url:
        out.looked_at.append(f"{reg}: none at {url} (running: {running})")
    else:
        out.looked_at.append(
            f"{reg}: {running} (name one with --data-dir or ${DATA_DIR_ENV}, or its NATS "
            "address with $QSERVER_NATS_URL)"
        )
    return out


def running_stack(data_dir: Path | None = None, url: str | None = None) -> dict[str, Any] | None:
    """What the local stack says about itself (`find_stack`), or None."""
    return find_stack(data_dir, url).info


# ----- the registry of running stacks -----


def registry_dir() -> Path:
    """Where running stacks register their data dirs: per user, whatever the data dir."""
    return Path(platformdirs.user_state_dir("qserver")) / "stacks"


def _entry(data_dir: Path) -> Path:
    """`<dir name>-<crc32 of the resolved path>.json`: entries are found by their contents
    (`registered_stacks`), the name only keeps one entry per data dir. Not a sha256: hashlib
    maps OpenSSL into the stack's supervisor, which registers itself (ADR 34)."""
    resolved = str(Path(data_dir).resolve())
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(resolved).name)[:40] or "root"
    return registry_dir() / f"{stem}-{zlib.crc32(resolved.encode()):08x}.json"


def register_stack(data_dir: Path) -> None:
    """Say that a stack runs on `data_dir` (called by it, with its lock held)."""
    entry = _entry(data_dir)
    entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    body = {"data_dir": str(Path(data_dir).resolve()), "pid": os.getpid()}
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(body) + "\n")
    os.replace(tmp, entry)


def unregister_stack(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        _entry(data_dir).unlink()


STALE_AFTER_S = 60.0


def registered_stacks(prune: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The registered stacks that run (data dir, info), oldest entry first. With `prune`,
    entries of stacks gone for a minute are removed (a killed stack leaves its own)."""
    found: list[tuple[float, Path, dict[str, Any]]] = []
    try:
        entries = list(registry_dir().glob("*.json"))
    except OSError:
        return []
    for entry in entries:
        try:
            mtime = entry.stat().st_mtime
            d = Path(json.loads(entry.read_text())["data_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        info, _ = _read_info(d)
        if info is not None:
            found.append((mtime, d, info))
        elif prune and not lock_is_held(d / LOCK_FILE) and time.time() - mtime > STALE_AFTER_S:
            with contextlib.suppress(OSError):
                entry.unlink()
    return [(d, info) for _, d, info in sorted(found, key=lambda t: t[0])]


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
    stack = running_stack(url=url) if stack is None else stack
    client = (stack or {}).get("nats_client")
    if not stack or not isinstance(client, dict) or not is_stack_nats(url, stack):
        return auth
    return replace(auth, nkey=client.get("nkey"), inbox_prefix=client.get("inbox_prefix"))
