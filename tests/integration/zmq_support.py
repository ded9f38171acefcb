"""The 0MQ bridge as a real process in front of a test's services, and a pyzmq client of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from services.runtime.procs import ServiceProcess, tcp_ready
from services.stack.natsserver import free_port
from tests.conftest import Services

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Bridge:
    control: str
    info: str
    proc: ServiceProcess

    def log(self) -> str:
        return self.proc.log_file.read_text(errors="replace")


@contextlib.asynccontextmanager
async def bridge_on(
    nats_url: str, prefix: str, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Bridge]:
    """`python -m services.zmq_bridge` on free ports, with `args`."""
    control, info = free_port(), free_port()
    proc = ServiceProcess(
        "zmq_bridge",
        nats_url,
        prefix,
        log_dir / f"zmq_bridge-{control}.log",
        "--control-addr",
        f"tcp://127.0.0.1:{control}",
        "--info-addr",
        f"tcp://127.0.0.1:{info}",
        *args,
        env=env,
    ).start()
    try:
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(tcp_ready, "127.0.0.1", control, 0.5):
                assert proc.alive(), f"the bridge exited:\n{proc.log_tail()}"
                await asyncio.sleep(0.05)
        yield Bridge(f"tcp://127.0.0.1:{control}", f"tcp://127.0.0.1:{info}", proc)
    finally:
        proc.stop()


def running_bridge(
    services: Services, *args: str, env: dict[str, str] | None = None
) -> contextlib.AbstractAsyncContextManager[Bridge]:
    """A bridge in front of a test's services."""
    return bridge_on(services.nats.url, services.prefix, services.log_dir, *args, env=env)


class ZmqClient:
    """A REQ socket as the reference's clients use it: one request, then its reply."""

    def __init__(
        self,
        address: str,
        *,
        server_key: str | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
        encoding: str = "json",
    ) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket = self.ctx.socket(zmq.REQ)
        self.sock.linger = 0
        if server_key is not None:
            public, secret = client_keys or zmq.curve_keypair()
            self.sock.curve_serverkey = server_key.encode()
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.encoding = encoding
        self.sock.connect(address)

    async def raw(self, body: bytes, timeout: float = 30.0) -> bytes:
        await self.sock.send(body)
        async with asyncio.timeout(timeout):
            reply: bytes = await self.sock.recv()
        return reply

    async def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        msg = {"method": method, "params": params or {}}
        if self.encoding == "json":
            reply: dict[str, Any] = msgspec.json.decode(
                await self.raw(msgspec.json.encode(msg), timeout)
            )
        else:
            reply = msgspec.msgpack.decode(await self.raw(msgspec.msgpack.encode(msg), timeout))
        return reply

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@contextlib.asynccontextmanager
async def zmq_client(address: str, **kw: Any) -> AsyncIterator[ZmqClient]:
    c = ZmqClient(address, **kw)
    try:
        yield c
    finally:
        c.close()


class Subscriber:
    """A SUB socket on the bridge's info address, as `qserver-console-monitor` has."""

    def __init__(self, address: str, topic: bytes) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.subscribe(topic)
        self.sock.connect(address)

    async def next(self, timeout: float = 30.0) -> tuple[bytes, bytes]:
        async with asyncio.timeout(timeout):
            topic, payload = await self.sock.recv_multipart()
        return topic, payload

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@contextlib.asynccontextmanager
async def subscriber(address: str, topic: bytes) -> AsyncIterator[Subscriber]:
    s = Subscriber(address, topic)
    try:
        yield s
    finally:
        s.close()


# ----- the reference's clients, in a venv of their own -----

REF_VENV = ROOT / ".venv-reference"
REF_V001_VENV = ROOT / ".venv-reference-v001"


def reference_venv(venv: Path) -> Path:
    """The bin/ directory of a venv with the reference's clients, made with `make` if needed.

    They live apart from .venv: bluesky-queueserver's `qserver` script would replace ours.
    """
    stamp = venv / ".installed"
    if not stamp.exists():
        target = str(stamp.relative_to(ROOT))
        done = subprocess.run(
            ["make", "-s", target], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            pytest.fail(f"`make {target}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return venv / "bin"


def reference_env(bridge: Bridge, **extra: str) -> dict[str, str]:
    """The environment a reference client finds the bridge with (its own variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QSERVER_", "PYTEST_"))}
    env.pop("VIRTUAL_ENV", None)
    return {
        **env,
        "QSERVER_ZMQ_CONTROL_ADDRESS": bridge.control,
        "QSERVER_ZMQ_INFO_ADDRESS": bridge.info,
        **extra,
    }
