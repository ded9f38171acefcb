"""Fixtures: a real nats-server per session, and the services as real processes per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.client import Client
from services.runtime.procs import CORE_SERVICES, ServiceProcess, readiness_probe
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import NatsServer


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background (nohup, `&` in a script) inherits SIGINT ignored,
    # and so would every process it starts: the tests that stop a child with Ctrl-C's signal
    # (`qserver monitor`, the stack) need the default back in their children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


def new_topic() -> str:
    """A document topic of one test's own."""
    return f"t{uuid.uuid4().hex[:10]}.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Tansu broker (memory only) shared by a module's tests; each test uses its own topic."""
    b = KafkaBroker(log_file=tmp_path_factory.mktemp("kafka") / "tansu.log").start()
    yield b
    b.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for one test, for tests that restart or kill it."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


def unique_prefix() -> str:
    return f"qs.t{uuid.uuid4().hex[:10]}"


class Services:
    """The core services of one test, each a real process, isolated by a unique prefix."""

    def __init__(
        self,
        nats: NatsServer,
        log_dir: Path,
        prefix: str | None = None,
        extra: dict[str, list[str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.nats = nats
        self.extra = extra or {}
        self.env = env or {}
        self.prefix = prefix or unique_prefix()
        self.log_dir = log_dir
        self.procs: dict[str, ServiceProcess] = {}
        self.client: Client | None = None

    def start(self, *names: str) -> None:
        for name in names or CORE_SERVICES:
            proc = ServiceProcess(
                name,
                self.nats.url,
                self.prefix,
                self.log_dir / f"{name}.log",
                *self.extra.get(name, []),
                env=self.env,
            )
            self.procs[name] = proc.start()

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    async def connect(self) -> Client:
        # Generous: the suite must hold on a busy machine (a reply late is not a reply lost).
        self.client = await Client.connect(self.nats.url, self.prefix, timeout=30.0)
        return self.client

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every started service answers its readiness probe."""
        deadline = asyncio.get_running_loop().time() + timeout
        c = await Client.connect(self.nats.url, self.prefix, timeout=1.0)
        try:
            for name, proc in self.procs.items():
                subject, body = readiness_probe(name, c.subjects)
                while True:
                    if not proc.alive():
                        raise RuntimeError(f"service {name} exited:\n{proc.log_tail()}")
                    try:
                        await c.nc.request(subject, body, timeout=1.0)
                        break
                    except (NoRespondersError, NatsTimeout):
                        if asyncio.get_running_loop().time() > deadline:
                            raise TimeoutError(
                                f"service {name} not ready:\n{proc.log_tail()}"
                            ) from None
                        await asyncio.sleep(0.05)
        finally:
            await c.close()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.log_tail()}" for n, p in self.procs.items())


@contextlib.asynccontextmanager
async def running_services(
    nats: NatsServer,
    log_dir: Path,
    extra: dict[str, list[str]] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Services]:
    svc = Services(nats, log_dir, extra=extra, env=env)
    svc.start()
    try:
        await svc.wait_ready()
        await svc.connect()
        yield svc
    finally:
        if svc.client is not None:
            await svc.client.close()
        svc.stop_all()


@pytest.fixture
async def services(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Services]:
    """Queue and history services running against the session's nats-server."""
    async with running_services(nats_server, tmp_path) as svc:
        yield svc


@pytest.fixture(scope="module")
async def module_services(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    """The same, shared by a module's tests (for tests that leave the state as they found it)."""
    async with running_services(nats_server, tmp_path_factory.mktemp("services")) as svc:
        yield svc


@pytest.fixture
def client(services: Services) -> Client:
    assert services.client is not None
    return services.client


SIM_PLANS = frozenset({"count", "scan", "rel_scan", "list_scan", "grid_scan", "sleep", "mv"})


def plan(name: str = "count", *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A plan item as a client submits it.

    Items must name real plans of the simulated beamline, so a name that is not one
    (`plan("a")`) gives `count([det1])` tagged with that name in its metadata; `tag()`
    reads it back. Queue-order tests read as before.
    """
    if name not in SIM_PLANS:
        return {
            "item_type": "plan",
            "name": "count",
            "args": [["det1"]],
            "kwargs": {"md": {"tag": name}},
        }
    item: dict[str, Any] = {"item_type": "plan", "name": name, "args": list(args)}
    if kwargs:
        item["kwargs"] = kwargs
    return item


def tag(item: dict[str, Any]) -> str:
    """The name a test gave an item with `plan(name)`."""
    md = item.get("kwargs", {}).get("md", {})
    return md.get("tag", item["name"]) if isinstance(md, dict) else item["name"]


USER = {"user": "tester", "user_group": "primary"}


def packages_loaded(modules: str, packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` (top-level names) importing `modules` (as `import` says them)
    loads, in a fresh interpreter: the modules loaded by each, sorted."""
    code = (
        f"import json, sys, {modules}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


# Figures that tests measure (failover recovery times, ...), printed after the run.
FIGURES: list[str] = []


def report(line: str) -> None:
    """Print `line` now (with -s) and in the summary at the end of the run (always)."""
    print(line)
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("measured")
        for line in FIGURES:
            terminalreporter.write_line(line)
