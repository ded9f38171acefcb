"""Which process is which, on this host: worker service instances and environment processes.

A worker instance is named `<host>:<pid>:<random>`, so that an environment can tell whether
the worker that supervises it still lives (the same host, and that pid is a worker) without
asking it over NATS.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

WORKER_MODULE = b"services.worker"


def new_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def instance_process(instance: str) -> tuple[str, int]:
    """The host and pid of a worker instance name (pid 0 if it cannot be read)."""
    host, _, rest = instance.partition(":")
    pid = rest.partition(":")[0]
    return host, int(pid) if pid.isdigit() else 0


def on_this_host(host: str) -> bool:
    return host == socket.gethostname()


def _cmdline(pid: int) -> list[bytes] | None:
    """The arguments of a living process, None if it is gone or a zombie (Linux: /proc)."""
    if pid <= 0:
        return None
    try:
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return None


def is_env_process(pid: int, env_uid: str) -> bool:
    """True if `pid` is alive and is the environment process `env_uid`."""
    args = _cmdline(pid)
    return args is not None and env_uid.encode() in args


def is_worker_process(pid: int) -> bool:
    """True if `pid` is alive and is a worker service (`python -m services.worker ...`)."""
    args = _cmdline(pid)
    return args is not None and WORKER_MODULE in args
