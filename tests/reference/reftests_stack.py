"""The embedded stack the reference client's tests talk to, run from the project's venv.

This module runs in the scratch venv of `make test-reference` (bluesky-queueserver-api and
the reference's packages, not ours): it starts `python -m services.stack.embedded` with
the project's Python, extra gateways beside it, and resets the stack's state between tests
over HTTP, as any client would. It imports nothing of the project.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# bluesky-httpserver's single-user key of its tests: the reference tests send it.
API_KEY_FOR_TESTS = "APIKEYFORTESTS"
START_TIMEOUT = 120.0  # a stack on a loaded 2-core machine takes 10-30 s to answer
STOP_TIMEOUT = 30.0
SETTLE_TIMEOUT = 90.0
# Manager states a reset waits out before it acts.
TRANSIENT_STATES = frozenset(
    {"creating_environment", "closing_environment", "destroying_environment", "starting_queue"}
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on, below the kernel's ephemeral range.

    A port from that range can be taken as the local end of an outgoing connection before a
    server (re)starts on it; the session reuses its ports for every stack it starts.
    """
    top = min(_ephemeral_low(), 65536) - 1
    for _ in range(500):
        port = random.randint(10000, top) if top > 11000 else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


class ClosedPort:
    """A loopback port held bound but not listening: connecting to it is refused at once.

    Where the reference's tests expect no server at the default address, the default
    address points here (whatever else runs on the machine's 60610 and 60615).
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _die_with_parent() -> Any:
    """A preexec_fn: the child gets SIGTERM when this pytest process dies (Linux)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def bind_address(addr: str) -> tuple[str, int]:
    """`tcp://*:60616` or `tcp://localhost:60616` as (host to bind, port)."""
    rest = addr.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return ("127.0.0.1" if host in ("*", "localhost", "") else host), int(port)


@dataclass(frozen=True)
class StackOptions:
    """What `re_manager_cmd` asked of the manager, in our stack's terms."""

    zmq: bool = False  # run the 0MQ bridge
    zmq_control: tuple[str, int] | None = None  # (host, port); None: the session's port
    zmq_info: tuple[str, int] | None = None
    zmq_encoding: str = "json"
    zmq_private_key: str | None = None
    zmq_publish_console: bool = True
    ipython_kernel: bool = False
    permissions_file: str | None = None


@dataclass
class ZmqFlags:
    """The stack's 0MQ bridge options (ADR 19), read from its `--help`.

    Its flags set the ports (it listens on loopback); encoding, key and console feed come
    from the reference manager's variable names (QSERVER_ZMQ_*_FOR_SERVER). Until a stack
    has the bridge, 0MQ mode cannot start and says so.
    """

    available: set[str] = field(default_factory=set)

    def args(
        self, opts: StackOptions, control: tuple[str, int], info: tuple[str, int]
    ) -> list[str]:
        if not opts.zmq:
            return ["--no-zmq"] if "--no-zmq" in self.available else []
        missing = {"--zmq-port", "--zmq-info-port"} - self.available
        if missing:
            raise RuntimeError(
                "0MQ mode: the stack has no 0MQ bridge yet "
                f"({', '.join(sorted(missing))} missing from `stack up --help`)"
            )
        return ["--zmq-port", str(control[1]), "--zmq-info-port", str(info[1])]

    @staticmethod
    def env(opts: StackOptions) -> dict[str, str]:
        if not opts.zmq:
            return {}
        env = {
            "QSERVER_ZMQ_ENCODING_FOR_SERVER": opts.zmq_encoding,
            "QSERVER_ZMQ_PUBLISH_CONSOLE": "ON" if opts.zmq_publish_console else "OFF",
        }
        if opts.zmq_private_key:
            env["QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"] = opts.zmq_private_key
        return env


@dataclass
class Ports:
    """The session's default addresses: every stack it starts serves on them."""

    http: int = field(default_factory=free_port)
    zmq_control: int = field(default_factory=free_port)
    zmq_info: int = field(default_factory=free_port)


class RunningStack:
    """One `qserver stack up` process and what it wrote to stack.json."""

    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, opts: StackOptions) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.opts = opts
        self.info: dict[str, Any] = {}

    @property
    def http_url(self) -> str:
        return str(self.info["http_url"])

    def wait_ready(self, out_file: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        info_file = self.data_dir / "stack.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the stack exited with {self.proc.returncode}:\n{_tail(out_file)}"
                )
            try:
                info = json.loads(info_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                info = {}
            if info.get("pid") == self.proc.pid:
                self.info = info
                return
            time.sleep(0.1)
        raise RuntimeError(f"the stack did not start in {START_TIMEOUT:g} s:\n{_tail(out_file)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Its services die with it (the kernel sends them SIGKILL: PR_SET_PDEATHSIG).
                self.proc.kill()
                self.proc.wait()


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no output)"


class ExtraGateway:
    """Another gateway process on the stack's NATS: bluesky-httpserver started with other
    settings beside the manager, as `fastapi_server_fs` does.

    It gets them as bluesky-httpserver does, from the environment: the single-user key
    (QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY) and the config file (QSERVER_HTTP_SERVER_CONFIG);
    its logins go to the stack's login bucket.
    """

    def __init__(
        self,
        python: str,
        stack: RunningStack,
        host: str,
        port: int,
        *,
        key: str | None,
        config_file: str | None = None,
    ) -> None:
        self.url = f"http://{host}:{port}"
        data_dir = stack.data_dir
        log = data_dir / "logs" / f"gateway-{port}.log"
        env = _clean_env()
        # The stack's gateway role: its NATS key and inbox prefix (services.stack.credentials).
        env["QSERVER_NATS_NKEY"] = str(data_dir / "nats-keys" / "gateway.nk")
        env["QSERVER_NATS_INBOX_PREFIX"] = "_INBOX.gateway"
        if key:
            env["QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY"] = key
        if config_file:
            env["QSERVER_HTTP_SERVER_CONFIG"] = config_file
        argv = [
            python,
            "-m",
            "services.gateway",
            "--nats-url",
            stack.info["nats_url"],
            "--prefix",
            stack.info["prefix"],
            "--host",
            host,
            "--port",
            str(port),
        ]
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the extra gateway exited:\n{_tail(log)}")
            try:
                httpx.get(f"{self.url}/docs", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the extra gateway did not answer:\n{_tail(log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _clean_env() -> dict[str, str]:
    """This process's environment without anybody's QSERVER_* settings.

    The reference's tests set QSERVER_* variables of their own (client addresses, keys);
    some names are ours too (QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY...).
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("QSERVER_")}


class PortTaken(RuntimeError):
    """The stack found one of its ports taken: start it again."""


PORT_ATTEMPTS = 5


class StackRunner:
    """Starts the stack the tests need, restarts it when they need other options."""

    def __init__(self, python: str, repo: Path, workdir: Path, *, http_port: int) -> None:
        self.python = python
        self.repo = repo
        self.workdir = workdir
        self.ports = Ports(http=http_port)
        self.emergency_key = os.urandom(12).hex()
        self.stack: RunningStack | None = None
        self.starts = 0
        self.zmq_flags = ZmqFlags(self.flags("services.stack.embedded"))
        self._gateway_flags: set[str] | None = None

    def flags(self, module: str) -> set[str]:
        """The command-line flags `python -m <module> --help` lists."""
        out = subprocess.run(
            [self.python, "-m", module, "--help"],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
            env=_clean_env(),
        ).stdout
        return {w.strip(",[]") for w in out.split() if w.startswith("--")}

    def gateway_has_logins(self) -> bool:
        """Whether the gateway serves bluesky-httpserver's logins (ADR 23: --auth-store)."""
        if self._gateway_flags is None:
            self._gateway_flags = self.flags("services.gateway")
        return "--auth-store" in self._gateway_flags

    def _kernel_args(self, opts: StackOptions) -> list[str]:
        if not opts.ipython_kernel:
            return []
        if "--use-ipython-kernel" not in self.zmq_flags.available:
            raise RuntimeError(
                "IPython kernel mode (--use-ipython-kernel=ON): the stack has no such flag yet"
            )
        return ["--use-ipython-kernel", "ON"]

    def control_address(self, opts: StackOptions) -> tuple[str, int]:
        return opts.zmq_control or ("127.0.0.1", self.ports.zmq_control)

    def info_address(self, opts: StackOptions) -> tuple[str, int]:
        return opts.zmq_info or ("127.0.0.1", self.ports.zmq_info)

    def ensure(self, opts: StackOptions) -> RunningStack:
        if self.stack is not None and self.stack.opts == opts and self.stack.proc.poll() is None:
            return self.stack
        # Options we cannot map fail here, before the running stack is stopped.
        option_args = [
            *self.zmq_flags.args(opts, self.control_address(opts), self.info_address(opts)),
            *self._kernel_args(opts),
        ]
        self.stop()
        for attempt in range(PORT_ATTEMPTS):
            try:
                self.stack = self._start(opts, option_args)
                return self.stack
            except PortTaken:
                # The NATS port we picked was taken before nats-server bound it (a new one is
                # picked), or a port the test fixed is, for now, some connection's local end.
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def _start(self, opts: StackOptions, option_args: list[str]) -> RunningStack:
        self.starts += 1
        data_dir = self.workdir / f"stack-{self.starts}"
        data_dir.mkdir(parents=True)
        # The gateway's single-user key: the one the reference's tests send.
        key_file = data_dir / "http_api_key"
        key_file.write_text(API_KEY_FOR_TESTS + "\n")
        key_file.chmod(0o600)
        env = _clean_env()
        env["QSERVER_EMERGENCY_LOCK_KEY_FOR_SERVER"] = self.emergency_key
        env.update(self.zmq_flags.env(opts))
        if opts.permissions_file:
            env["QSERVER_PERMISSIONS"] = opts.permissions_file
        argv = [
            self.python,
            "-m",
            "services.stack.embedded",
            "--data-dir",
            str(data_dir),
            "--nats-port",
            str(free_port()),
            "--http-port",
            str(self.ports.http),
            "--no-kafka",
            "--no-catalog",
            *option_args,
        ]
        out_file = self.workdir / f"stack-{self.starts}.out"
        with open(out_file, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.repo,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        stack = RunningStack(proc, data_dir, opts)
        try:
            stack.wait_ready(out_file)
        except BaseException as e:
            stack.stop()
            if "port" in str(e) and "already in use" in str(e):
                raise PortTaken(str(e)) from None
            raise
        return stack

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None


@dataclass
class Resetter:
    """Brings a stack back to a fresh manager's state, over HTTP with the test key."""

    url: str
    emergency_key: str

    def _call(
        self, client: httpx.Client, verb: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        r = client.request(verb, f"/api{path}", json=body or {})
        r.raise_for_status()
        return r.json()

    def status(self, client: httpx.Client) -> dict[str, Any]:
        st: dict[str, Any] = self._call(client, "GET", "/status")
        return st

    def settle(self, client: httpx.Client, until: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            st = self.status(client)
            if until(st):
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"reset: the manager did not become {what}: {st}")
            time.sleep(0.1)

    def reset(self) -> None:
        headers = {"Authorization": f"ApiKey {API_KEY_FOR_TESTS}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30.0) as c:
            st = self.settle(c, lambda s: s["manager_state"] not in TRANSIENT_STATES, "steady")
            lock = st.get("lock") or {}
            if lock.get("environment") or lock.get("queue"):
                self._call(c, "POST", "/unlock", {"lock_key": self.emergency_key})
            if st["worker_environment_exists"]:
                idle = st["manager_state"] == "idle"
                r = self._call(c, "POST", "/environment/close" if idle else "/environment/destroy")
                if not r.get("success"):
                    self._call(c, "POST", "/environment/destroy")
                self.settle(
                    c,
                    lambda s: not s["worker_environment_exists"] and s["manager_state"] == "idle",
                    "idle with the environment closed",
                )
            else:
                self.settle(c, lambda s: s["manager_state"] == "idle", "idle")
            st = self.status(c)
            if st.get("queue_stop_pending"):
                self._call(c, "POST", "/queue/stop/cancel")
            if st.get("queue_autostart_enabled"):
                self._call(c, "POST", "/queue/autostart", {"enable": False})
            for verb, path, body in (
                ("POST", "/queue/mode/set", {"mode": "default"}),
                ("POST", "/queue/clear", None),
                ("POST", "/history/clear", None),
                (
                    "POST",
                    "/permissions/reload",
                    {"restore_plans_devices": True, "restore_permissions": True},
                ),
            ):
                r = self._call(c, verb, path, body)
                if isinstance(r, dict) and r.get("success") is False:
                    raise RuntimeError(f"reset: {path} refused: {r.get('msg')}")
