"""The HTTP gateway as a real process in front of a test's services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.runtime.procs import ServiceProcess
from services.stack.natsserver import free_port
from tests.conftest import Services

Status = dict[str, Any]


@dataclass
class Gateway:
    url: str
    proc: ServiceProcess

    def log(self) -> str:
        return self.proc.log_tail()


async def wait_http(url: str, proc: ServiceProcess, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as c, asyncio.timeout(timeout):
        while True:
            if not proc.alive():
                raise RuntimeError(f"the gateway exited:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                await c.get(f"{url}/docs", timeout=0.5)
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_gateway(
    nats_url: str,
    prefix: str,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Gateway]:
    """`python -m services.gateway` on a free port, with `args` (auth options, --timeout)."""
    port = free_port()
    proc = ServiceProcess(
        "gateway",
        nats_url,
        prefix,
        log_dir / f"gateway-{port}.log",
        "--port",
        str(port),
        *args,
        env=env,
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_http(url, proc)
        yield Gateway(url, proc)
    finally:
        proc.stop()


def gateway_for(services: Services, *args: str, **kw: Any) -> Any:
    return running_gateway(services.nats.url, services.prefix, services.log_dir, *args, **kw)


async def wait_status(
    http: httpx.AsyncClient, pred: Callable[[Status], bool], timeout: float = 60.0
) -> Status:
    """Poll `GET /status` until `pred` holds (tests only: the gateway itself never polls)."""
    async with asyncio.timeout(timeout):
        while True:
            st: Status = (await http.get("/status")).json()
            if pred(st):
                return st
            await asyncio.sleep(0.05)
