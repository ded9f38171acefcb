"""`qserver stack up`: nats-server and every service on one machine, supervised."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from qserver.configargs import CONFIG_ENV, config_path, switch
from qserver.configargs import add_argument as add_config_argument
from qserver.documents import DEFAULT_TOPIC
from qserver.errors import QServerError
from qserver.localstack import DATA_DIR_ENV, register_stack, registered_stacks, unregister_stack
from qserver.localstack import default_data_dir as _default_data_dir
from qserver.localstack import lock_is_held as _lock_is_held
from qserver.protocol.subjects import DEFAULT_PREFIX, check_prefix
from services.runtime.procs import (
    GATEWAY,
    SERVICES,
    ZMQ_BRIDGE,
    ServiceProcess,
    die_with_parent_hook,
)
from services.stack.credentials import CLIENT_ROLE, StackKeys, ensure_keys, write_server_config
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import NatsServer, port_in_use, server_info
from services.stack.tiled_server import DEFAULT_CATALOG, TiledServer
from services.stack.wakeups import child_or_signal

NATS_HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
POLL_INTERVAL = 1.0  # a child's exit and a stop signal wake the supervisor at once
STOP_TIMEOUT = 5.0
TILED_READY_TIMEOUT = 60.0
HELPER_GRACE = 10.0  # beyond READY_TIMEOUT, for the start-up checks' own start
HELPER_POLL = 0.05
CHECK_TIMEOUT = 60.0  # the Kafka topic, the --http-config check
# nats-server's Go heap may grow this many percent over its live heap before a collection
# (GOGC; the Go default is 100). Not a fixed limit: JetStream's block buffers (up to 8 MiB
# each) make the live heap lumpy, and a limit near it left the collector running without
# end (ADR 34, amendment). A GOGC or GOMEMLIMIT in the environment wins.
NATS_GC_PERCENT = 25
# The local Kafka broker keeps every document it is given (Tansu's memory engine has no
# retention): past this much resident memory it is restarted empty (ADR 10, amendment).
KAFKA_MAX_MIB = 1024
KAFKA_MEMORY_CHECK_S = 10.0
# More than CRASH_LIMIT exits within CRASH_WINDOW seconds is a crash loop: restarting at once
# would only spin the CPU and flood the log, so the next start waits CRASH_BACKOFF seconds.
CRASH_LIMIT = 5
CRASH_WINDOW = 10.0
CRASH_BACKOFF = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StackError(QServerError):
    """The stack cannot start, or cannot go on; the message says what to do."""

    code = "stack_error"


class StackNotRunning(StackError):
    """No stack runs on the data dir."""

    code = "stack_not_running"


class _Stopped(Exception):
    """A stop signal arrived while the stack was starting."""


def default_data_dir() -> Path:
    return _default_data_dir()


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    data_dir: Path
    nats_port: int = 4222
    http_port: int = 60610
    http_host: str = "127.0.0.1"
    http_auth: bool = True  # False: the gateway takes no keys (loopback only)
    http_config: Path | None = None  # bluesky-httpserver's config: logins, not the single key
    nats_url: str | None = None
    prefix: str = DEFAULT_PREFIX
    kafka: bool = True
    kafka_port: int = 0  # 0: a free port
    kafka_topic: str = DEFAULT_TOPIC
    kafka_max_mib: int = KAFKA_MAX_MIB  # 0: no bound
    catalog: bool = True  # serve the run catalog with Tiled, filled from the document stream
    tiled_port: int = 0  # 0: a free port
    # Kernel mode (ADR 20): True/False from --use-ipython-kernel; None: the configuration's.
    ipython_kernel: bool | None = None
    zmq: bool = True  # the 0MQ bridge: the reference's control protocol and console feed
    zmq_port: int = 60615
    zmq_info_port: int = 60625

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def info_file(self) -> Path:
        return self.data_dir / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "stack.lock"

    @property
    def http_key_file(self) -> Path:
        return self.data_dir / "http_api_key"

    @property
    def nats_keys_dir(self) -> Path:
        """The nkey seed file of each NATS user (0600, in a 0700 directory)."""
        return self.data_dir / "nats-keys"

    @property
    def nats_config_file(self) -> Path:
        return self.data_dir / "nats" / "nats-server.conf"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def kernel_dir(self) -> Path:
        """Kernel mode: the kernel's connection file (0600) and IPython's files."""
        return self.data_dir / "kernel"

    @property
    def zmq_control_addr(self) -> str:
        return f"tcp://{NATS_HOST}:{self.zmq_port}"

    @property
    def zmq_info_addr(self) -> str:
        return f"tcp://{NATS_HOST}:{self.zmq_info_port}"

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(n for n in SERVICES if self.zmq or n != ZMQ_BRIDGE)


def ensure_http_key(cfg: StackConfig) -> str:
    """The gateway's single-user key, generated once and kept in the data dir (mode 0600)."""
    path = cfg.http_key_file
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(24).hex() + "\n")  # alphanumeric, as bluesky-httpserver wants
    return path.read_text().strip()


def say(msg: str) -> None:
    print(msg, flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@contextlib.contextmanager
def hold_lock(cfg: StackConfig) -> Iterator[None]:
    """Hold the data dir's lock; the kernel drops it when this process ends, however it ends."""
    with open(cfg.lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            raise StackError(
                f"a stack is already running on {cfg.data_dir} (pid {owner}): "
                "stop it first, or pass another --data-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def lock_is_held(cfg: StackConfig) -> bool:
    return _lock_is_held(cfg.lock_file)


class Stack:
    """nats-server (unless one is given) and the services, as children of this process."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.nats_url = cfg.nats_url or f"nats://{NATS_HOST}:{cfg.nats_port}"
        self.nats: NatsServer | None = None
        self.kafka: KafkaBroker | None = None
        self.tiled: TiledServer | None = None
        # The NATS users' keys, when this stack runs its own nats-server (ADR 11).
        self.keys: StackKeys | None = None
        self.procs: dict[str, ServiceProcess] = {}
        self.exits: dict[str, deque[float]] = {name: deque() for name in SERVICES}
        self.restart_due: dict[str, float] = {}
        self.kafka_checked = time.monotonic()
        self.stop_signal: int | None = None
        # The 0MQ bridge's public key and who may connect, from the start-up checks.
        self.zmq: dict[str, Any] = {}

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum

    # ----- start -----

    def start(self) -> None:
        if self.cfg.nats_url is None:
            self._start_nats()
        else:
            self._check_nats_url()
        if self.cfg.kafka and self.cfg.nats_url is None:
            # With --nats-url this is a deployment: Kafka is configured, not started here.
            self._start_kafka()
        if self.cfg.catalog and self.cfg.nats_url is None:
            self._launch_tiled()  # it takes seconds to answer: waited for after the services
        if self.cfg.http_config is not None:
            self._check_http_config(self.cfg.http_config)
        if port_in_use(self.cfg.http_host, self.cfg.http_port):
            raise StackError(
                f"HTTP port {self.cfg.http_port} is already in use (another stack or gateway?): "
                "pick a free one with --http-port"
            )
        self._check_zmq_ports()
        started = time.monotonic()
        for name in self.cfg.services:
            self.procs[name] = ServiceProcess(
                name,
                self.nats_url,
                self.cfg.prefix,
                self.cfg.logs_dir / f"{name}.log",
                *self._service_args(name),
                env={**self._service_env(), **self._nats_env(name)},
                death_signal=self._service_death_signal(),
            ).start()
        self._wait_all_ready(started)
        if self.tiled is not None:
            self._wait_tiled()
        self._write_info()

    def _check_zmq_ports(self) -> None:
        if not self.cfg.zmq:
            return
        for port, flag in (
            (self.cfg.zmq_port, "--zmq-port"),
            (self.cfg.zmq_info_port, "--zmq-info-port"),
        ):
            if port_in_use(NATS_HOST, port):
                raise StackError(
                    f"0MQ port {port} is already in use (another stack, or the reference's "
                    f"RE Manager?): pick a free one with {flag}, or run without 0MQ: --no-zmq"
                )

    def _service_args(self, name: str) -> list[str]:
        if name == GATEWAY:
            return self._gateway_args()
        if name == "worker":
            return self._worker_args()
        if name == ZMQ_BRIDGE:
            return [
                "--control-addr",
                self.cfg.zmq_control_addr,
                "--info-addr",
                self.cfg.zmq_info_addr,
            ]
        return []

    def _gateway_args(self) -> list[str]:
        """Logins (a config file), the single-user key kept in the data dir, or no keys."""
        if self.cfg.http_config is not None:
            auth = ["--http-config", str(self.cfg.http_config)]
        elif self.cfg.http_auth:
            ensure_http_key(self.cfg)
            auth = ["--single-user-key-file", str(self.cfg.http_key_file)]
        else:
            auth = ["--no-auth"]
        return ["--host", self.cfg.http_host, "--port", str(self.cfg.http_port), *auth]

    def _worker_args(self) -> list[str]:
        """Kernel mode on or off as asked, and its files in the data dir (unless configured)."""
        args = []
        if self.cfg.ipython_kernel is not None:
            args += ["--use-ipython-kernel", "ON" if self.cfg.ipython_kernel else "OFF"]
        if not os.environ.get("QSERVER_IPYTHON_DIR"):
            args += ["--ipython-dir", str(self.cfg.kernel_dir)]
        return args

    def _service_death_signal(self) -> signal.Signals:
        """What a service gets from the kernel if this process is killed without cleaning up.

        Our own nats-server goes down at the same moment, so a service's graceful drain would
        only wait for a flush timeout; its state is in JetStream, made to survive SIGKILL.
        """
        return signal.SIGTERM if self.cfg.nats_url else signal.SIGKILL

    def _start_nats(self) -> None:
        port = self.cfg.nats_port
        if port_in_use(NATS_HOST, port):
            raise StackError(
                f"NATS port {port} is already in use (another nats-server or stack?): "
                "pick a free one with --nats-port"
            )
        say(f"starting nats-server on {NATS_HOST}:{port}...")
        started = time.monotonic()
        # A user per role, no anonymous access: made once, kept in the data dir.
        self.keys = ensure_keys(self.cfg.nats_keys_dir)
        write_server_config(self.cfg.nats_config_file, self.keys, self.cfg.prefix)
        self.nats = NatsServer(
            self.cfg.data_dir / "nats",
            port=port,
            host=NATS_HOST,
            log_file=self.cfg.logs_dir / "nats-server.log",
            death_signal=signal.SIGTERM,
            config_file=self.cfg.nats_config_file,
            gc_percent=NATS_GC_PERCENT,
        )
        self._run_nats()
        say(f"nats-server ready in {time.monotonic() - started:.2f} s")

    def _start_kafka(self) -> None:
        """The local Kafka-compatible broker (Tansu, memory only) and the document topic."""
        say("starting the Kafka broker (Tansu, in memory)...")
        self.kafka = KafkaBroker(
            port=self.cfg.kafka_port,
            host=NATS_HOST,
            log_file=self.cfg.logs_dir / "kafka.log",
            death_signal=signal.SIGTERM,
        )
        self._run_kafka()
        say(f"Kafka broker ready on {self.kafka.bootstrap}, topic {self.cfg.kafka_topic}")

    def _run_kafka(self) -> None:
        assert self.kafka is not None
        try:
            self.kafka.start()
        except Exception as e:
            raise StackError(f"the Kafka broker did not start: {e}") from None
        # Auto-created topics get 4 partitions; documents of a run must stay in order. In a
        # child: the Kafka client library would stay loaded here for the stack's life.
        args = ["kafka-topic", self.kafka.bootstrap, self.cfg.kafka_topic]
        for event in self._helper_events(args, b"", CHECK_TIMEOUT):
            if "error" in event:
                raise StackError(event["error"])

    def _launch_tiled(self) -> None:
        """A Tiled server on the embedded catalog (kept in the data dir across restarts)."""
        say("starting the Tiled server for the run catalog...")
        self.tiled = TiledServer(
            self.cfg.data_dir / "catalog",
            port=self.cfg.tiled_port,
            host=NATS_HOST,
            log_file=self.cfg.logs_dir / "tiled.log",
            death_signal=signal.SIGTERM,
        )
        if port_in_use(NATS_HOST, self.tiled.port):
            raise StackError(
                f"Tiled port {self.tiled.port} is already in use: pick another with --tiled-port"
            )
        self.tiled.launch()

    def _wait_tiled(self) -> None:
        assert self.tiled is not None
        try:
            self.tiled.wait_ready(TILED_READY_TIMEOUT)
        except (RuntimeError, TimeoutError) as e:
            raise StackError(f"the Tiled server did not start: {e}") from None
        say(f"Tiled server ready on {self.tiled.url} (runs in the '{DEFAULT_CATALOG}' catalog)")

    def _service_env(self) -> dict[str, str]:
        # A stable name for the queue service's leader lease: restarted after a crash, it
        # retakes its own lease at once instead of waiting for it to go stale.
        env: dict[str, str] = {"QSERVER_INSTANCE": f"{self.cfg.prefix}-queue"}
        if self.kafka is None:
            if not self.cfg.kafka:
                env["QSERVER_KAFKA_BOOTSTRAP"] = ""
        else:
            env["QSERVER_KAFKA_BOOTSTRAP"] = self.kafka.bootstrap
            env["QSERVER_KAFKA_TOPIC"] = self.cfg.kafka_topic
        if self.tiled is not None:
            env["QSERVER_TILED_URL"] = self.tiled.url
            env["QSERVER_TILED_API_KEY"] = self.tiled.api_key
            # Its Tiled has no streaming cache: nobody to tell that a run's writes ended.
            env["QSERVER_TILED_CLOSE_STREAMS"] = "0"
        if self.cfg.nats_url is None and self.kafka is None and self.tiled is None:
            env["QSERVER_DOCS_STREAM"] = "0"  # nobody would read the document stream (ADR 10)
        return env

    def _nats_env(self, service: str) -> dict[str, str]:
        """The service's own NATS user, when this stack runs nats-server (else the caller's)."""
        return self.keys.environ(service) if self.keys is not None else {}

    def _run_nats(self) -> None:
        assert self.nats is not None
        try:
            self.nats.start()
        except (RuntimeError, TimeoutError, FileNotFoundError) as e:
            raise StackError(f"nats-server did not start: {e}") from None

    def _check_nats_url(self) -> None:
        say(f"using NATS at {self.nats_url}")
        try:
            info = server_info(self.nats_url)
        except ConnectionError as e:
            raise StackError(
                f"{e}: start a nats-server there, or leave out --nats-url to run one here"
            ) from None
        if not info.get("jetstream"):
            raise StackError(f"NATS at {self.nats_url} has no JetStream: start it with -js")

    def _wait_all_ready(self, started: float) -> None:
        """Until every service answers, in a child that exits once they do (ADR 33).

        This process watches the services (an exit while starting is an error at once) and
        the stop signals; the child connects to NATS and probes each service in turn.
        """
        say(f"starting services: {', '.join(self.procs)}...")
        checks: list[dict[str, Any]] = []
        for name in self.procs:
            if name == GATEWAY:
                checks.append({"name": name, "http": f"{self.cfg.http_url}/docs"})
            elif name == ZMQ_BRIDGE:
                checks.append({"name": name, "tcp": [NATS_HOST, self.cfg.zmq_port]})
            else:
                # The worker answers only on internal subjects, which the queue's user may
                # send to.
                checks.append({"name": name, "role": "queue" if name == "worker" else CLIENT_ROLE})
        plan = {
            "nats_url": self.nats_url,
            "prefix": self.cfg.prefix,
            "timeout_s": READY_TIMEOUT,
            "roles": {c["role"]: self._nats_env(c["role"]) for c in checks if "role" in c},
            "checks": checks,
            "zmq": self.cfg.zmq,
        }
        plan_json = json.dumps(plan).encode()
        for event in self._helper_events(["ready"], plan_json, READY_TIMEOUT + HELPER_GRACE):
            service = str(event.get("name"))
            if "error" in event:
                raise StackError(event["error"])
            if "zmq" in event:
                self.zmq = event["zmq"]
            elif event.get("ready"):
                say(f"{service} service ready in {time.monotonic() - started:.1f} s")
            elif "late" in event:
                raise StackError(self._not_started(service, event["late"]))

    def _helper_events(
        self, args: list[str], stdin: bytes, within_s: float
    ) -> Iterator[dict[str, Any]]:
        """The JSON lines of `python -m services.stack.readiness ARGS`, read while watching
        the services and the stop signals; StackError if it fails without saying why or
        does not end within `within_s` seconds."""
        deadline = time.monotonic() + within_s
        helper = subprocess.Popen(
            [sys.executable, "-m", "services.stack.readiness", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent_hook(signal.SIGKILL),
        )
        assert helper.stdin is not None and helper.stdout is not None
        other: list[str] = []
        try:
            with contextlib.suppress(BrokenPipeError):
                helper.stdin.write(stdin)
            helper.stdin.close()
            fd, pending = helper.stdout.fileno(), b""
            while True:
                if self.stop_signal is not None:
                    raise _Stopped
                for name, proc in self.procs.items():
                    code = proc.poll()
                    if code is not None:
                        raise StackError(self._not_started(name, describe_exit(code)))
                if time.monotonic() > deadline:
                    raise StackError(f"the start-up checks did not end within {within_s:g} s")
                readable, _, _ = select.select([fd], [], [], HELPER_POLL)
                if not readable:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        other.append(line.decode(errors="replace"))
                        continue
                    yield event
        finally:
            if helper.poll() is None:
                helper.kill()
            helper.wait()
            helper.stdout.close()
        if helper.returncode != 0:
            text = "\n".join([*other, pending.decode(errors="replace")]).strip()
            raise StackError(
                f"the start-up checks failed ({describe_exit(helper.returncode)}):\n{text}"
            )

    def _check_http_config(self, path: Path) -> None:
        """Refuse at once a gateway configuration the gateway would refuse (named in the error)."""
        for event in self._helper_events(["http-config", str(path)], b"", CHECK_TIMEOUT):
            if "error" in event:
                raise StackError(event["error"])

    def _not_started(self, name: str, what: str) -> str:
        """Why `name` is not up (it `what`), with the end of its log."""
        proc = self.procs[name]
        tail = f"the end of {proc.log_file}:\n{proc.log_tail()}"
        if name == GATEWAY:
            return (
                f"the gateway {what} on {self.cfg.http_url} (is port {self.cfg.http_port} "
                f"free? pick another with --http-port); {tail}"
            )
        if name == ZMQ_BRIDGE:
            return f"the 0MQ bridge {what} on {self.cfg.zmq_control_addr}; {tail}"
        if what.startswith("did not"):
            return f"{name} service {what}; {tail}"
        return f"{name} service {what} while starting; {tail}"

    # ----- what a client needs to know -----

    def info(self) -> dict[str, Any]:
        """The contents of stack.json: every endpoint and pid, built here and nowhere else."""
        nats_proc = self.nats.proc if self.nats else None
        return {
            "nats_url": self.nats_url,
            "prefix": self.cfg.prefix,
            "data_dir": str(self.cfg.data_dir),
            "logs_dir": str(self.cfg.logs_dir),
            "pid": os.getpid(),
            "nats_pid": nats_proc.pid if nats_proc else None,
            "nats_store": str(self.nats.store_dir) if self.nats else None,
            "services": {name: proc.pid for name, proc in self.procs.items()},
            "http_port": self.cfg.http_port,
            "http_url": self.cfg.http_url,
            "http_api_key": ensure_http_key(self.cfg) if self._single_user_key() else None,
            "http_config": str(self.cfg.http_config) if self.cfg.http_config else None,
            # What a client on this machine connects with (qserver.localstack); None: the
            # NATS of --nats-url, with the caller's credentials.
            "nats_client": self._client_credentials(),
            "kafka_bootstrap": self.kafka.bootstrap if self.kafka else None,
            "kafka_topic": self.cfg.kafka_topic if self.kafka else None,
            "kafka_pid": self.kafka.proc.pid if self.kafka and self.kafka.proc else None,
            "tiled_url": self.tiled.url if self.tiled else None,
            "tiled_api_key": self.tiled.api_key if self.tiled else None,
            "tiled_catalog": DEFAULT_CATALOG if self.tiled else None,
            "tiled_pid": self.tiled.proc.pid if self.tiled and self.tiled.proc else None,
            # The reference's clients: REManagerAPI(zmq_control_addr=..., zmq_info_addr=...).
            "zmq_control_addr": self.cfg.zmq_control_addr if self.cfg.zmq else None,
            "zmq_info_addr": self.cfg.zmq_info_addr if self.cfg.zmq else None,
            "zmq_public_key": self.zmq.get("public_key") if self.cfg.zmq else None,
            "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            # Kernel mode's connection files are here (`config_get` names the current one).
            "kernel_dir": str(self.cfg.kernel_dir),
        }

    def _client_credentials(self) -> dict[str, str] | None:
        if self.keys is None:
            return None
        auth = self.keys.auth(CLIENT_ROLE)
        return {"role": CLIENT_ROLE, "nkey": auth.nkey or "", "inbox_prefix": auth.inbox}

    def _write_info(self) -> None:
        # Write then rename, so that a reader never sees half a file.
        tmp = self.cfg.info_file.with_suffix(".json.tmp")
        tmp.unlink(missing_ok=True)
        # Readable by this user only: it holds the gateway's API key.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(json.dumps(self.info(), indent=2) + "\n")
        os.replace(tmp, self.cfg.info_file)
        # So that clients find a stack on any data dir by its NATS address (ADR 21).
        try:
            register_stack(self.cfg.data_dir)
        except OSError as e:
            say(f"warning: this stack is not registered for clients to find ({e})")

    def announce(self) -> None:
        # Clients find the stack (address, prefix, NATS key) in the default data dir.
        default = self.cfg.data_dir == default_data_dir()
        env = "" if default else f"{DATA_DIR_ENV}={self.cfg.data_dir} "
        say(
            f"qserver stack is up (pid {os.getpid()}); Ctrl-C stops it\n"
            f"  NATS      {self.nats_url}\n"
            f"  prefix    {self.cfg.prefix}\n"
            f"  data      {self.cfg.data_dir}\n"
            f"  logs      {self.cfg.logs_dir}\n"
            f"  HTTP      {self.cfg.http_url} ({self._http_auth_note()})\n"
            f"{self._zmq_line()}"
            f"{self._data_lines()}"
            f"{self._nats_auth_line()}"
            f"  try       {env}qserver status"
        )

    def _data_lines(self) -> str:
        lines = ""
        if self.kafka is not None:
            lines += f"  Kafka     {self.kafka.bootstrap}, topic {self.cfg.kafka_topic}\n"
        if self.tiled is not None:
            lines += (
                f"  catalog   {self.tiled.url}, catalog '{DEFAULT_CATALOG}' "
                "(key in stack.json: tiled_api_key)\n"
            )
        return lines

    def _nats_auth_line(self) -> str:
        if self.keys is None:
            return ""
        return (
            f"  NATS keys {self.cfg.nats_keys_dir} (a user per role, no anonymous access; "
            f"clients: {CLIENT_ROLE}.nk)\n"
        )

    def _single_user_key(self) -> bool:
        return self.cfg.http_auth and self.cfg.http_config is None

    def _zmq_line(self) -> str:
        if not self.cfg.zmq:
            return ""
        key = self.zmq.get("public_key")
        curve = f"CurveZMQ, public key {key}" if key else "no encryption"
        who = "every local user" if self.zmq.get("any_local_user") else "this OS user only"
        return (
            f"  0MQ       {self.cfg.zmq_control_addr}, console {self.cfg.zmq_info_addr} "
            f"({curve}; {who})\n"
        )

    def _http_auth_note(self) -> str:
        if self.cfg.http_config is not None:
            return f"logins as configured in {self.cfg.http_config}"
        if not self.cfg.http_auth:
            return "no keys: --no-auth"
        return f"header 'Authorization: ApiKey <key>', key in {self.cfg.http_key_file}"

    # ----- supervise -----

    def supervise(self) -> int:
        """Restart what crashes until a stop signal, or until the queue service asks to stop.

        Woken by a child's exit or a stop signal, else once per `POLL_INTERVAL` (ADR 28).
        """
        with child_or_signal() as wait:
            return self._supervise(wait)

    def _supervise(self, wait: Callable[[float], None]) -> int:
        while self.stop_signal is None:
            wait(POLL_INTERVAL)
            self._check_nats()
            self._check_kafka()
            self._check_tiled()
            for name, proc in self.procs.items():
                due = self.restart_due.get(name)
                if due is not None:
                    if time.monotonic() >= due:
                        self._restart(name)
                    continue
                code = proc.poll()
                if code is None:
                    continue
                if name == "queue" and code == 0:
                    say("queue service exited normally (manager_stop): stopping the stack")
                    return 0
                self._on_exit(name, code)
        say(f"{signal.Signals(self.stop_signal).name} received: stopping the stack")
        return 0

    def _on_exit(self, name: str, code: int) -> None:
        now = time.monotonic()
        recent = self.exits[name]
        recent.append(now)
        while recent[0] < now - CRASH_WINDOW:
            recent.popleft()
        if len(recent) > CRASH_LIMIT:
            say(
                f"{name} service {describe_exit(code)}; {len(recent)} exits in "
                f"{CRASH_WINDOW:g} s: restarting in {CRASH_BACKOFF:g} s "
                f"(see {self.procs[name].log_file})"
            )
            self.restart_due[name] = now + CRASH_BACKOFF
        else:
            self._restart(name, f"{name} service {describe_exit(code)}")

    def _restart(self, name: str, why: str | None = None) -> None:
        proc = self.procs[name]
        self.restart_due.pop(name, None)
        proc.restarts += 1
        proc.start()
        say(f"{why or name + ' service'}: restarted (restart {proc.restarts}, pid {proc.pid})")
        self._write_info()

    def _check_nats(self) -> None:
        if self.nats is None or self.nats.running():
            return
        assert self.nats.proc is not None
        code = self.nats.proc.returncode
        say(f"nats-server {describe_exit(code)}: restarting it on port {self.nats.port}")
        self._run_nats()
        say("nats-server restarted; the services reconnect by themselves")
        self._write_info()

    def _check_kafka(self) -> None:
        if self.kafka is None:
            return
        if not self.kafka.running():
            say("the Kafka broker stopped: restarting it (it keeps no data across restarts)")
            self._run_kafka()
            self._write_info()
            return
        now = time.monotonic()
        if not self.cfg.kafka_max_mib or now < self.kafka_checked + KAFKA_MEMORY_CHECK_S:
            return
        self.kafka_checked = now
        rss = self.kafka.rss_mib()
        if rss is None or rss <= self.cfg.kafka_max_mib:
            return
        say(
            f"the Kafka broker holds {rss:.0f} MiB, over its bound of {self.cfg.kafka_max_mib} "
            "MiB (--kafka-max-mib; it keeps every document in memory): restarting it empty. "
            "Consumers go on with the next documents; every run stays in the document stream "
            "and the catalog"
        )
        self.kafka.stop(signal.SIGKILL)  # memory only: nothing to save
        self._run_kafka()
        self._write_info()

    def _check_tiled(self) -> None:
        if self.tiled is None or self.tiled.running():
            return
        say("the Tiled server stopped: restarting it (the catalog is kept on disk)")
        self.tiled.launch()
        self._write_info()

    # ----- stop -----

    def shutdown(self) -> None:
        """Services first (they drain their connections), then nats-server; no orphans."""
        procs = list(reversed(self.procs.values()))
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop(STOP_TIMEOUT)
        if self.tiled is not None:
            self.tiled.stop(timeout=STOP_TIMEOUT)
        if self.kafka is not None:
            self.kafka.stop(signal.SIGKILL)  # memory only: nothing to save
        if self.nats is not None:
            self.nats.stop(timeout=STOP_TIMEOUT)
        self.cfg.info_file.unlink(missing_ok=True)
        unregister_stack(self.cfg.data_dir)
        if procs or self.nats is not None:
            say("stack stopped")


def run_stack(
    *,
    data_dir: Path | None,
    nats_port: int = 4222,
    http_port: int = 60610,
    nats_url: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    kafka: bool = True,
    kafka_port: int = 0,
    kafka_max_mib: int = KAFKA_MAX_MIB,
    http_auth: bool = True,
    catalog: bool = True,
    tiled_port: int = 0,
    http_config: Path | None = None,
    ipython_kernel: bool | None = None,
    zmq: bool = True,
    zmq_port: int = 60615,
    zmq_info_port: int = 60625,
) -> int:
    """Run the stack in the foreground until a stop signal or `manager_stop`; the exit code."""
    cfg = StackConfig(
        data_dir=Path(data_dir) if data_dir else default_data_dir(),
        nats_port=nats_port,
        http_port=http_port,
        http_auth=http_auth,
        http_config=Path(http_config).resolve() if http_config else None,
        nats_url=nats_url,
        prefix=prefix,
        kafka=kafka,
        kafka_port=kafka_port,
        kafka_max_mib=kafka_max_mib,
        catalog=catalog,
        tiled_port=tiled_port,
        ipython_kernel=ipython_kernel,
        zmq=zmq,
        zmq_port=zmq_port,
        zmq_info_port=zmq_info_port,
    )
    stack = Stack(cfg)
    previous = {sig: signal.signal(sig, stack.request_stop) for sig in STOP_SIGNALS}
    try:
        try:
            check_prefix(prefix)
        except ValueError as e:
            raise StackError(str(e)) from None
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        # State, logs and keys: for the user who runs the stack only.
        os.chmod(cfg.data_dir, 0o700)
        with hold_lock(cfg):
            # Left behind by a stack that was killed; it would name dead processes.
            cfg.info_file.unlink(missing_ok=True)
            registered_stacks(prune=True)  # and the registry entries of killed stacks
            try:
                stack.start()
                stack.announce()
                return stack.supervise()
            except _Stopped:
                return 0
            finally:
                stack.shutdown()
    except StackError as e:
        print(f"error: {e.msg}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read_stack_info(data_dir: Path | None) -> dict[str, Any]:
    """What the running stack wrote to stack.json; StackNotRunning if no stack runs."""
    cfg = StackConfig(data_dir=Path(data_dir) if data_dir else default_data_dir())
    # The lock, not the file, says whether a stack runs: a killed stack leaves its file behind.
    if not lock_is_held(cfg):
        raise StackNotRunning(
            f"no stack is running on {cfg.data_dir}: start one with `qserver stack up`"
        )
    try:
        info: dict[str, Any] = json.loads(cfg.info_file.read_text())
    except FileNotFoundError:
        raise StackNotRunning(
            f"the stack on {cfg.data_dir} is still starting, or stopping"
        ) from None
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.stack.embedded",
        description="Run nats-server and every queue-server service on this machine.",
    )
    add_config_argument(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"JetStream store, keys, logs and stack.json (${DATA_DIR_ENV}; {default_data_dir()})",
    )
    p.add_argument(
        "--nats-port", type=int, default=4222, help="port of the nats-server started here"
    )
    p.add_argument("--http-port", type=int, default=60610, help="port of the HTTP gateway")
    p.add_argument(
        "--no-auth",
        dest="http_auth",
        action="store_false",
        help="the HTTP gateway takes no API keys (it listens on loopback only); NATS still "
        "refuses clients without the stack's keys",
    )
    p.add_argument(
        "--http-config",
        type=Path,
        default=None,
        help="the gateway takes logins as this bluesky-httpserver configuration says "
        "(authentication, api_access, resource_access) instead of the single-user key",
    )
    p.add_argument(
        "--nats-url",
        default=None,
        help="use this NATS server (with JetStream) instead of starting one",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix of this queue server")
    p.add_argument("--kafka-port", type=int, default=0, help="port of the local Kafka broker")
    p.add_argument(
        "--kafka-max-mib",
        type=_not_negative,
        default=KAFKA_MAX_MIB,
        help="restart the local Kafka broker empty when it holds more than this much memory "
        f"(it keeps every document; 0: no bound) [{KAFKA_MAX_MIB}]",
    )
    p.add_argument(
        "--no-kafka", dest="kafka", action="store_false", help="do not publish documents to Kafka"
    )
    p.add_argument(
        "--no-catalog",
        dest="catalog",
        action="store_false",
        help="do not serve the run catalog (Tiled) nor save runs to it",
    )
    p.add_argument("--tiled-port", type=int, default=0, help="port of the catalog's Tiled server")
    p.add_argument(
        "--use-ipython-kernel",
        dest="ipython_kernel",
        nargs="?",
        const=True,
        default=None,
        type=_on_off,
        metavar="ON|OFF",
        help="run the environment in an IPython kernel (`jupyter console --existing`); "
        "default: the configuration's (worker.use_ipython_kernel), else OFF",
    )
    p.add_argument(
        "--no-zmq",
        dest="zmq",
        action="store_false",
        help="do not run the 0MQ bridge (the reference's control protocol and console feed)",
    )
    p.add_argument("--zmq-port", type=int, default=60615, help="port of the 0MQ control socket")
    p.add_argument(
        "--zmq-info-port", type=int, default=60625, help="port of the 0MQ console/info socket"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    use_config(config_path(sys.argv[1:] if argv is None else argv, os.environ))
    args = parser().parse_args(argv)
    del args.config  # loaded above
    raise SystemExit(run_stack(**vars(args)))


def stack_argv(
    *,
    data_dir: Path | None,
    nats_port: int,
    http_port: int,
    nats_url: str | None,
    prefix: str,
    kafka: bool,
    kafka_port: int,
    kafka_max_mib: int,
    http_auth: bool,
    catalog: bool,
    tiled_port: int,
    http_config: Path | None,
    ipython_kernel: bool | None,
    zmq: bool,
    zmq_port: int,
    zmq_info_port: int,
) -> list[str]:
    """The arguments of `python -m services.stack.embedded` for `run_stack(**the same)`."""
    argv = ["--nats-port", str(nats_port), "--http-port", str(http_port), "--prefix", prefix]
    argv += ["--kafka-port", str(kafka_port), "--tiled-port", str(tiled_port)]
    argv += ["--kafka-max-mib", str(kafka_max_mib)]
    argv += ["--zmq-port", str(zmq_port), "--zmq-info-port", str(zmq_info_port)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if nats_url is not None:
        argv += ["--nats-url", nats_url]
    if http_config is not None:
        argv += ["--http-config", str(http_config)]
    if ipython_kernel is not None:
        argv += ["--use-ipython-kernel", "ON" if ipython_kernel else "OFF"]
    for on, flag in ((kafka, "--no-kafka"), (catalog, "--no-catalog"), (zmq, "--no-zmq")):
        if not on:
            argv.append(flag)
    if not http_auth:
        argv.append("--no-auth")
    return argv


def exec_stack(**options: Any) -> NoReturn:
    """Become `python -m services.stack.embedded` with these options (`qserver stack up`).

    The supervisor stays resident for the stack's life: the same process (its pid), without
    the modules the CLI loaded (ADR 33). The configuration file is in the environment.
    """
    argv = [sys.executable, "-m", "services.stack.embedded", *stack_argv(**options)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no bound) or more, not {value}")
    return value


def _on_off(text: str) -> bool:
    try:
        return switch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def use_config(path: str | None) -> None:
    """Check the configuration file now, and hand it to every service through the environment."""
    if not path:
        return
    # In a child (`python -m qserver.config FILE`): the supervisor loads no msgspec (ADR 34).
    done = subprocess.run(
        [sys.executable, "-m", "qserver.config", path],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip() or f"configuration error: {path} was not read")
    os.environ[CONFIG_ENV] = str(Path(path).resolve())


if __name__ == "__main__":
    main()
