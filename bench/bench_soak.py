"""Does the stack stay as fast after many writes? Rounds of sequential adds; prints JSON.

Run: `.venv/bin/python -m bench.bench_soak [--rounds 20] [-n 1000] [stack options]` (the real
embedded stack, by default `--no-kafka --no-catalog`; any other arguments go to the stack).
Each round clears the queue and adds `n` items one after another; per round it prints the
rate, the p50, and nats-server's CPU time per add and its resident memory. Each add writes
the queue's log and two console lines, so from the sixth round of 1,000 on the console
stream (10,000 lines) drops its oldest line for each new one.

Written for ADR 34's amendment: with `GOMEMLIMIT=24MiB` (the earlier setting; put it in
the environment to see it) nats-server's CPU per add went from ~0.4 ms to 2.3-3.2 ms in
rounds 10-12 and 17-20 of 20: its collector ran without end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import psutil

from bench.common import embedded_stack
from qserver.client import Client

USER = {"user": "bench", "user_group": "primary"}
ITEM = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 1}}


async def run(info: dict[str, Any], rounds: int, n: int) -> dict[str, Any]:
    nats_server = psutil.Process(info["nats_pid"])
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=60)
    out = []
    try:
        for _ in range(rounds):
            await c.request("queue_clear")
            lat = []
            cpu0 = sum(nats_server.cpu_times()[:2])
            t0 = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                reply = await c.request("queue_item_add", {"item": ITEM, **USER})
                lat.append(time.perf_counter() - t)
                if not reply["success"]:
                    raise RuntimeError(f"queue_item_add failed: {reply['msg']}")
            wall = time.perf_counter() - t0
            cpu = sum(nats_server.cpu_times()[:2]) - cpu0
            out.append(
                {
                    "adds_per_s": round(n / wall, 1),
                    "p50_ms": round(statistics.median(lat) * 1e3, 3),
                    "nats_server_cpu_per_add_us": round(cpu / n * 1e6),
                    "nats_server_rss_mib": round(nats_server.memory_info().rss / 2**20, 1),
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        await c.request("queue_clear")
    finally:
        await c.close()
    rates = [r["adds_per_s"] for r in out]
    cpus = [r["nats_server_cpu_per_add_us"] for r in out]
    return {
        "benchmark": "soak",
        "rounds": rounds,
        "n": n,
        "adds_per_s_median": statistics.median(rates),
        "adds_per_s_slowest_round": min(rates),
        "nats_server_cpu_per_add_us_median": statistics.median(cpus),
        "nats_server_cpu_per_add_us_most": max(cpus),
        "nats_server_rss_mib_most": max(r["nats_server_rss_mib"] for r in out),
        "each_round": out,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("-n", type=int, default=1000, help="adds per round")
    args, stack_args = p.parse_known_args()
    with embedded_stack(*(stack_args or ["--no-kafka", "--no-catalog"])) as info:
        print(json.dumps(asyncio.run(run(info, args.rounds, args.n)), indent=1))


if __name__ == "__main__":
    main()
