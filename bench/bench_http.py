"""HTTP gateway benchmark: requests/s and p50/p99 with concurrent clients; prints JSON.

Run: `.venv/bin/python -m bench.bench_http` (starts its own nats-server, services and a
gateway), or `--url http://host:port --api-key KEY` to measure a server that is already
running (e.g. bluesky-httpserver in front of the reference RE Manager, for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import stack
from services.runtime.procs import ServiceProcess
from services.stack.natsserver import free_port

KEY = "BenchKey1"
ITEM = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 1}}


async def client_loop(
    http: httpx.AsyncClient, method: str, path: str, body: Any, n: int, out: list[float]
) -> None:
    for _ in range(n):
        t = time.perf_counter()
        r = await http.request(method, path, json=body)
        out.append(time.perf_counter() - t)
        if r.status_code != 200 or r.json().get("success") is False:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")


async def measure(
    url: str, key: str | None, method: str, path: str, body: Any, clients: int, total: int
) -> dict[str, Any]:
    """`clients` concurrent clients, each with its own connection, `total` requests in all."""
    headers = {"Authorization": f"ApiKey {key}"} if key else {}
    https = [httpx.AsyncClient(base_url=url, headers=headers, timeout=30) for _ in range(clients)]
    lat: list[float] = []
    try:
        for h in https:  # open the connections before the clock starts
            await h.request(method, path, json=body)
        t0 = time.perf_counter()
        per = total // clients
        await asyncio.gather(*(client_loop(h, method, path, body, per, lat) for h in https))
        wall = time.perf_counter() - t0
    finally:
        for h in https:
            await h.aclose()
    xs = sorted(lat)
    return {
        "clients": clients,
        "n": len(xs),
        "req_per_s": round(len(xs) / wall, 1),
        "p50_ms": round(xs[len(xs) // 2] * 1e3, 2),
        "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, 2),
    }


async def run(url: str, key: str | None, total: int, concurrency: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url, "status": [], "item_add": []}
    for c in concurrency:
        out["status"].append(await measure(url, key, "GET", "/api/status", {}, c, total))
    for c in concurrency:
        body = {"item": ITEM}
        out["item_add"].append(
            await measure(url, key, "POST", "/api/queue/item/add", body, c, total)
        )
        await httpx.AsyncClient(base_url=url, headers=_auth(key)).post("/api/queue/clear")
    return out


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"} if key else {}


@contextlib.asynccontextmanager
async def own_gateway() -> AsyncIterator[str]:
    """nats-server, the core services and one gateway (single-user key), torn down after."""
    async with stack() as (nats, prefix):
        with tempfile.TemporaryDirectory(prefix="qs-bench-http-") as tmp:
            port = free_port()
            gw = ServiceProcess(
                "gateway",
                nats.url,
                prefix,
                Path(tmp) / "gateway.log",
                "--port",
                str(port),
                "--log-level",
                "WARNING",
                env={"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY},
            ).start()
            url = f"http://127.0.0.1:{port}"
            try:
                async with httpx.AsyncClient() as h:
                    for _ in range(200):
                        with contextlib.suppress(httpx.TransportError):
                            await h.get(f"{url}/docs")
                            break
                        await asyncio.sleep(0.05)
                yield url
            finally:
                gw.stop()


async def main(args: argparse.Namespace) -> None:
    concurrency = [int(c) for c in args.clients.split(",")]
    if args.url:
        result = await run(args.url, args.api_key, args.requests, concurrency)
    else:
        async with own_gateway() as url:
            result = await run(url, KEY, args.requests, concurrency)
    print(json.dumps(result, indent=2))


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__)
    p.add_argument("--url", help="measure this server instead of starting a gateway")
    p.add_argument("--api-key", help="API key for --url")
    p.add_argument("--requests", type=int, default=2000, help="requests per workload")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
