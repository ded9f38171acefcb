"""Shared benchmark plumbing: a private nats-server and services, and latency summaries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from qserver.client import Client, NoAnswer
from qserver.localstack import DATA_DIR_ENV
from services.runtime.procs import CORE_SERVICES, ServiceProcess
from services.stack.natsserver import NatsServer, free_port


def summary(lat_s: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds and the sequential rate in operations per second."""
    xs = sorted(lat_s)
    n = len(xs)
    return {
        "n": n,
        "p50_ms": round(xs[n // 2] * 1e3, 3),
        "p99_ms": round(xs[min(n - 1, int(n * 0.99))] * 1e3, 3),
        "mean_ms": round(statistics.fmean(xs) * 1e3, 3),
        "ops_per_s": round(n / sum(xs), 1),
    }


@contextlib.asynccontextmanager
async def stack(services: tuple[str, ...] = CORE_SERVICES) -> AsyncIterator[tuple[NatsServer, str]]:
    """A private nats-server and the named services, torn down afterwards."""
    with tempfile.TemporaryDirectory(prefix="qs-bench-") as tmp:
        nats = NatsServer(Path(tmp) / "nats").start()
        prefix = f"qs.bench{uuid.uuid4().hex[:6]}"
        procs = [
            ServiceProcess(s, nats.url, prefix, Path(tmp) / f"{s}.log").start() for s in services
        ]
        try:
            c = await Client.connect(nats.url, prefix, timeout=1.0)
            for _ in range(300):
                try:
                    await c.request("status")
                    await c.request("history_get", {"limit": 0})
                    break
                except NoAnswer:
                    await asyncio.sleep(0.05)
            await c.close()
            yield nats, prefix
        finally:
            for p in procs:
                p.stop()
            nats.stop()


@contextlib.contextmanager
def embedded_stack(*args: str, timeout: float = 90.0) -> Iterator[dict[str, Any]]:
    """The embedded stack in a temporary data dir on free ports; yields its stack.json."""
    with tempfile.TemporaryDirectory(prefix="qs-bench-stack-") as tmp:
        ports = ["--nats-port", str(free_port()), "--http-port", str(free_port())]
        ports += ["--zmq-port", str(free_port()), "--zmq-info-port", str(free_port())]
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack.embedded", "--data-dir", tmp, *ports, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            stack_json = Path(tmp) / "stack.json"
            deadline = time.monotonic() + timeout
            while not stack_json.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not start (see {tmp}/logs)")
                time.sleep(0.05)
            # Clients read the stack's NATS key from its data dir (qserver.localstack).
            with mock.patch.dict(os.environ, {DATA_DIR_ENV: tmp}):
                yield json.loads(stack_json.read_text())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
