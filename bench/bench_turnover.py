"""Turnover: the queue's overhead per plan over a bare RunEngine, taken apart; prints JSON.

Run: `.venv/bin/python -m bench.bench_turnover [--rounds N] [stack options]` (the real
embedded stack, by default `--no-kafka --no-catalog`; any other arguments go to the stack).
Each round queues 100 `count([det1], num=1)` and times start to empty; the same plan runs
directly in a RunEngine in this process between rounds. The history records tell where the
time goes: `in_plan` (the environment's start to stop of each item, the RunEngine's share
plus the document publishing) and `between` (one item's stop to the next one's start: the
result through JetStream, the queue's log, the history record, the next start).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
from typing import Any

from bench.bench_exec import COUNT, USER, direct_count_ms
from bench.common import embedded_stack
from qserver.client import Client


async def one_round(c: Client) -> dict[str, float]:
    await c.request("history_clear")
    await c.request("queue_item_add_batch", {"items": [COUNT] * 100, **USER})
    t = time.perf_counter()
    await c.request("queue_start")
    await c.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=300
    )
    total = time.perf_counter() - t
    hist = (await c.request("history_get"))["items"]
    res = sorted((h["result"] for h in hist), key=lambda r: r["time_start"])
    in_plan = [r["time_stop"] - r["time_start"] for r in res]
    between = [b["time_start"] - a["time_stop"] for a, b in itertools.pairwise(res)]
    return {
        "per_plan_ms": total * 10,
        "in_plan_p50_ms": statistics.median(in_plan) * 1e3,
        "between_p50_ms": statistics.median(between) * 1e3,
    }


async def run(info: dict[str, Any], rounds: int) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=60)
    await c.request("environment_open")
    await c.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 120
    )
    out: list[dict[str, float]] = []
    direct: list[float] = []
    for _ in range(rounds):
        out.append(await one_round(c))
        direct.append(direct_count_ms())
    await c.close()
    med = {k: round(statistics.median(r[k] for r in out), 2) for k in out[0]}
    d = round(statistics.median(direct), 2)
    return {
        "benchmark": "turnover",
        "rounds": rounds,
        **med,
        "direct_RE_per_plan_ms": d,
        "overhead_per_plan_ms": round(med["per_plan_ms"] - d, 2),
        "each_round": [{k: round(v, 2) for k, v in r.items()} for r in out],
        "direct_each_round": [round(x, 2) for x in direct],
    }


def main() -> None:
    argv = sys.argv[1:]
    rounds = 3
    if "--rounds" in argv:
        i = argv.index("--rounds")
        rounds = int(argv[i + 1])
        del argv[i : i + 2]
    with embedded_stack(*(argv or ["--no-kafka", "--no-catalog"]), timeout=180) as info:
        try:
            import uvloop

            result = uvloop.run(run(info, rounds))
        except ImportError:
            result = asyncio.run(run(info, rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
