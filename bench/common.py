"""Shared benchmark plumbing: a private nats-server and services, and latency summaries."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from qserver.client import Client, NoAnswer
from qserver.natsserver import NatsServer
from qserver.procs import CORE_SERVICES, ServiceProcess


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
