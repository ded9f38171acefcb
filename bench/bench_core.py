"""Core benchmark: the same workloads as measured on the reference server; prints JSON.

Run: `.venv/bin/python -m bench.bench_core` (starts its own nats-server and services; this
process is the client, separate from the services).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec

from bench.common import stack, summary
from qserver.client import Client

USER = {"user": "bench", "user_group": "primary"}
ITEM = {
    "item_type": "plan",
    "name": "count",
    "args": [["det1", "det2"]],
    "kwargs": {"num": 10, "delay": 1},
}
REFERENCE = {
    "status_p50_ms": 0.31,
    "item_add_ops_per_s": 501,
    "item_add_p50_ms": 1.8,
    "item_add_p99_ms": 2.5,
    "queue_get_1000_p50_ms": 7.0,
    "change_seen_by_clients": "polling every 0.5-1 s",
}
TARGETS = {
    "status_p50_ms": 0.4,
    "item_add_ops_per_s": 2000,
    "item_add_p99_ms": 3.0,
    "queue_get_1000_p50_ms": 3.0,
    "edit_10000_over_10_ratio": 2.0,
    "event_after_reply_p50_ms": 2.0,
}


async def timed(c: Client, method: str, params: dict[str, Any], n: int) -> list[float]:
    body = msgspec.json.encode(params)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        reply = await c.request_raw(method, body)
        out.append(time.perf_counter() - t)
        if b'"success":false' in reply:
            raise RuntimeError(f"{method} failed: {reply[:200]!r}")
    return out


async def fill(c: Client, n: int) -> None:
    await c.request("queue_clear")
    for start in range(0, n, 500):
        r = await c.request("queue_item_add_batch", {"items": [ITEM] * min(500, n - start), **USER})
        assert r["success"], r["msg"]


async def edits(c: Client, n: int) -> dict[str, Any]:
    """Add to the back, move front to back, remove the front: each n times."""
    add = await timed(c, "queue_item_add", {"item": ITEM, **USER}, n)
    move = await timed(c, "queue_item_move", {"pos": "front", "pos_dest": "back"}, n)
    remove = await timed(c, "queue_item_remove", {"pos": "front"}, n)
    return {"add": summary(add), "move": summary(move), "remove": summary(remove)}


async def event_latency(c: Client, n: int) -> dict[str, Any]:
    """Time from an edit's reply to the status event that shows the edit (negative: before)."""
    seen: dict[str, float] = {}

    async def on_status(msg: Any) -> None:
        seen.setdefault(msgspec.json.decode(msg.data)["plan_queue_uid"], time.perf_counter())

    sub = await c.nc.subscribe(c.subjects.status_event, cb=on_status)
    after_reply, after_send = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        await c.request("queue_item_add", {"item": ITEM, **USER})
        t1 = time.perf_counter()
        st = await c.request("status")
        while st["plan_queue_uid"] not in seen:
            await asyncio.sleep(0.0002)
        t_ev = seen[st["plan_queue_uid"]]
        after_reply.append(t_ev - t1)
        after_send.append(t_ev - t0)
    await sub.unsubscribe()
    xs = sorted(after_reply)
    return {
        "event_after_reply_p50_ms": round(xs[n // 2] * 1e3, 3),
        "event_after_reply_p99_ms": round(xs[int(n * 0.99)] * 1e3, 3),
        "event_after_request_sent": summary(after_send),
    }


async def main() -> None:
    async with stack() as (nats, prefix):
        c = await Client.connect(nats.url, prefix)
        await timed(c, "status", {}, 200)  # warm up
        status = summary(await timed(c, "status", {}, 2000))
        await c.request("queue_clear")
        add = summary(await timed(c, "queue_item_add", {"item": ITEM, **USER}, 1000))
        queue_get = summary(await timed(c, "queue_get", {}, 200))
        await fill(c, 10)
        small = await edits(c, 300)
        await fill(c, 10_000)
        large = await edits(c, 300)
        ev = await event_latency(c, 300)
        await c.close()
    ratio = {k: round(large[k]["p50_ms"] / small[k]["p50_ms"], 2) for k in small}
    result = {
        "benchmark": "core",
        "status": status,
        "queue_item_add_1000_sequential": add,
        "queue_get_1000_items": queue_get,
        "edits_in_10_item_queue": small,
        "edits_in_10000_item_queue": large,
        "edit_10000_over_10_p50_ratio": ratio,
        "status_event": ev,
        "reference_0.0.25": REFERENCE,
        "targets": TARGETS,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
