"""Service processes: how to start one, and a small handle to stop or kill it."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from qserver.protocol.subjects import Subjects

# The services that talk only NATS, in start order; then every service, the HTTP gateway and
# the 0MQ bridge last.
CORE_SERVICES = ("queue", "history", "worker")
GATEWAY = "gateway"
ZMQ_BRIDGE = "zmq_bridge"
SERVICES = (*CORE_SERVICES, GATEWAY, ZMQ_BRIDGE)


def readiness_probe(name: str, subjects: Subjects) -> tuple[str, bytes]:
    """A request that the service answers only once it is ready: (subject, body).

    Being subscribed is not enough: the queue service loads its state from JetStream first.
    The gateway is probed over HTTP instead (`http_ready`).
    """
    probes = {
        "queue": (subjects.api("status"), b"{}"),
        "history": (subjects.api("history_get"), b'{"limit": 0}'),
        "worker": (subjects.worker_cmd("state"), b""),
    }
    return probes[name]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status code of `GET url` from a local plain-HTTP server, None if none answers.

    A bare socket and HTTP/1.0: the supervisor probes its own children with it, and stays
    without `urllib.request` (and the `ssl` and `email` it loads) for the stack's life
    (ADR 33). No proxy either: one from the environment would answer for a local server.
    """
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            line = s.makefile("rb").readline(1024)
    except OSError:
        return None
    fields = line.split()
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return None
    return int(fields[1])


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers `GET url` (any status: the gateway is up)."""
    return http_status(url, timeout) is not None


def tcp_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something listens on `host:port` (the 0MQ bridge, once it has bound)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def service_argv(name: str, nats_url: str, prefix: str, *extra: str) -> list[str]:
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r} (known: {', '.join(SERVICES)})")
    module = f"services.{name}"
    return [sys.executable, "-m", module, "--nats-url", nats_url, "--prefix", prefix, *extra]


_PR_SET_PDEATHSIG = 1


def die_with_parent_hook(sig: int | None) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get `sig` when this process dies (Linux only).

    A supervisor that is killed with SIGKILL cannot stop its children; the kernel can. The
    kernel sends `sig` when the *thread* that forked the child ends, not the process
    (prctl(2)): a child started from a short-lived thread (an executor, `asyncio.to_thread`)
    would be killed when that thread finishes. So only the main thread may start one.
    """
    if sig is None or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "a child that dies with its parent must be started from the main thread: "
            "PR_SET_PDEATHSIG fires when the thread that forks it ends"
        )
    parent = os.getpid()
    # Looked up before the fork: the child should only make the call.
    prctl = ctypes.CDLL(None).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


class ChildServer:
    """What a server child process (nats-server, the Kafka broker) has in common.

    Subclasses set `proc` and `log_file` and implement `start()`.
    """

    proc: subprocess.Popen[bytes] | None
    log_file: Path
    death_signal: int | None = None

    def start(self, timeout: float = 10.0) -> ChildServer:
        raise NotImplementedError

    def _spawn(
        self, cmd: list[str], *, log_output: bool = True, env: dict[str, str] | None = None
    ) -> None:
        """Start `cmd` in a session of its own, its output appended to the log file (unless the
        program writes the log itself), dying with this process when `death_signal` is set;
        `env` is its whole environment (None: this process's)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file if log_output else os.devnull, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(self.death_signal),
            )

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop it (SIGKILL to simulate a crash), SIGKILL if it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start again on the same port (and store, where there is one)."""
        self.stop(sig)
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ServiceProcess:
    """One service as a child process, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        nats_url: str,
        prefix: str,
        log_file: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        death_signal: int | None = None,
    ) -> None:
        self.name = name
        # Sent by the kernel when the process that started this one dies (Linux).
        self.death_signal = death_signal
        self.argv = service_argv(name, nats_url, prefix, *extra)
        self.log_file = Path(log_file)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> ServiceProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(self.death_signal),
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """The exit code if the process has ended, else None (also None if never started)."""
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> None:
        """Send SIGTERM without waiting, so that several services stop at the same time."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"
