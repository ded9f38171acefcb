"""Large replies: a small `status` request's latency, and fetching a 50,000-item queue; JSON.

Run: `.venv/bin/python -m bench.bench_large` (starts its own nats-server and services).
The status latency is the figure that must not change with the large-reply mechanism
(ADR 8): small replies take the same path as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import msgspec

from bench.bench_core import ITEM, USER, timed
from bench.common import stack, summary
from qserver.client import Client

QUEUE_ITEMS = int(os.environ.get("BENCH_QUEUE_ITEMS", "50000"))
BATCH = 2_000


async def fill(c: Client, n: int) -> None:
    for start in range(0, n, BATCH):
        items = [ITEM] * min(BATCH, n - start)
        r = await c.request("queue_item_add_batch", {"items": items, **USER}, timeout=60)
        assert r["success"], r["msg"]


async def fetch(c: Client, method: str, rounds: int) -> tuple[dict[str, float], int]:
    lat, size = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        raw = await c.request_raw(method, b"{}", timeout=60)
        lat.append(time.perf_counter() - t)
        size = len(raw)
        reply = msgspec.json.decode(raw)
        if not reply.get("success"):
            raise RuntimeError(f"{method} failed: {reply.get('msg')}")
    return summary(lat), size


async def main() -> None:
    async with stack() as (nats, prefix):
        c = await Client.connect(nats.url, prefix)
        await timed(c, "status", {}, 300)  # warm up
        status = summary(await timed(c, "status", {}, 3000))
        await fill(c, QUEUE_ITEMS)
        queue_get, size = await fetch(c, "queue_get", 5)
        status_full = summary(await timed(c, "status", {}, 3000))
        await c.close()
    print(
        json.dumps(
            {
                "benchmark": "large",
                "status_empty_queue": status,
                f"queue_get_{QUEUE_ITEMS}_items": {**queue_get, "reply_bytes": size},
                f"status_with_{QUEUE_ITEMS}_items": status_full,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
