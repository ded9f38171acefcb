"""Dry runs (ADR 31): how fast they answer, and what one costs a plan running beside it.

Runs the embedded stack (`--no-kafka --no-catalog`) with the simulated beamline; prints JSON.
Run: `.venv/bin/python -m bench.bench_dry_run [pairs]` (pairs of plan runs, alone and beside
dry runs, alternated; 5 by default).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from bench.common import embedded_stack
from qserver.client import Client

USER = {"user": "bench", "user_group": "primary"}
SCAN10 = {"item_type": "plan", "name": "scan", "args": [["det1"], "motor", -1, 1, 10]}
SCAN1000 = {"item_type": "plan", "name": "scan", "args": [["det1"], "motor", -1, 1, 1000]}
GRID = {
    "item_type": "plan",
    "name": "grid_scan",
    "args": [["det1"], "motor1", -1, 1, 60, "motor2", -1, 1, 60],
}
# CPU-bound: no delays, so that any time taken from the RunEngine's thread shows.
PLAN = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 300}}


async def until(c: Client, pred: Any, timeout: float = 300) -> dict[str, Any]:
    return await c.wait_for(pred, timeout=timeout)


async def plan_seconds(c: Client, beside: bool) -> tuple[float, int]:
    """The plan's run time (its history record), alone or with dry runs back to back."""
    r = await c.request("queue_item_add", {"item": PLAN, **USER})
    uid = r["item"]["item_uid"]
    await c.request("queue_start")
    await until(c, lambda s: s["running_item_uid"] == uid)
    dry_runs = 0
    while beside and (await c.request("status"))["running_item_uid"] == uid:
        await c.request("item_dry_run", {"item": GRID, **USER})
        dry_runs += 1
    await until(c, lambda s: s["manager_state"] == "idle" and s["items_in_queue"] == 0)
    last = (await c.request("history_get"))["items"][-1]["result"]
    return last["time_stop"] - last["time_start"], dry_runs


async def measure(info: dict[str, Any], pairs: int) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=60)
    try:
        await c.request("environment_open")
        await until(c, lambda s: s["worker_environment_exists"] and s["manager_state"] == "idle")
        latencies, simulated = [], []
        for _ in range(20):
            t = time.perf_counter()
            r = await c.request("item_dry_run", {"item": SCAN10, **USER})
            latencies.append(time.perf_counter() - t)
            simulated.append(r["report"]["elapsed"])
        big = (await c.request("item_dry_run", {"item": SCAN1000, **USER}))["report"]
        alone, beside, counts = [], [], []
        for _ in range(pairs):
            alone.append((await plan_seconds(c, False))[0])
            seconds, n = await plan_seconds(c, True)
            beside.append(seconds)
            counts.append(n)
        return {
            "dry_run_scan10_ms_median": round(statistics.median(latencies) * 1e3, 1),
            "dry_run_scan10_simulation_ms_median": round(statistics.median(simulated) * 1e3, 1),
            "dry_run_scan1000": {
                "messages": big["messages"],
                "complete": big["complete"],
                "simulation_s": big["elapsed"],
            },
            "count300_alone_s": [round(x, 2) for x in alone],
            "count300_beside_dry_runs_s": [round(x, 2) for x in beside],
            "dry_runs_beside_each": counts,
            "slowdown_median": round(statistics.median(beside) / statistics.median(alone), 2),
        }
    finally:
        await c.close()


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with embedded_stack("--no-kafka", "--no-catalog") as info:
        print(json.dumps(asyncio.run(measure(info, pairs)), indent=1))


if __name__ == "__main__":
    main()
