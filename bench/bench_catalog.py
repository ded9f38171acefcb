"""The catalog's cost per saved run: CPU of the Tiled server and of the catalog writer; JSON.

Run: `.venv/bin/python -m bench.bench_catalog [--rounds N] [--plans N] [stack options]`
(the real embedded stack with its default Kafka broker and Tiled catalog). Each round
queues `--plans` (50) `count([det1], num=1)`, runs them, waits until every run is saved
(the `run_saved` events), and reads the CPU time the Tiled server and the catalog writer
(ADR 32) used meanwhile; a first round warms up (the writer imports Tiled's client on its
first run) and is not counted. Also the plans' wall time per plan, for reference: with
back-to-back 7 ms plans the catalog catches up after the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from typing import Any

import psutil

from bench.bench_exec import COUNT, USER
from bench.common import embedded_stack
from qserver.client import Client

SAVE_TIMEOUT_S = 600.0


def catalog_processes() -> dict[str, psutil.Process]:
    """The Tiled server (started through `services.stack.tiled_serve`) and the writer."""
    found: dict[str, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline", "name"]):
        cmdline = p.info["cmdline"] or []
        if "services.stack.tiled_serve" in cmdline:
            found["tiled"] = p
        elif p.info["name"] == "catalog-writer":
            found["writer"] = p
    return found


def cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[name] = t.user + t.system
    return out


async def one_round(c: Client, saved: list[Any], n: int) -> dict[str, float]:
    before, k = cpu_s(catalog_processes()), len(saved)
    await c.request("queue_item_add_batch", {"items": [COUNT] * n, **USER})
    t = time.perf_counter()
    await c.request("queue_start")
    await c.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=300
    )
    wall = time.perf_counter() - t
    deadline = time.monotonic() + SAVE_TIMEOUT_S
    while len(saved) < k + n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{k + n - len(saved)} runs not saved in {SAVE_TIMEOUT_S:g} s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the writer's last requests after the last run_saved
    after = cpu_s(catalog_processes())  # a writer started again meanwhile counts from 0
    row = {
        f"{name}_cpu_ms_per_run": (after[name] - before.get(name, 0.0)) * 1e3 / n for name in after
    }
    row["plans_wall_ms_per_plan"] = wall * 1e3 / n
    return row


async def run(info: dict[str, Any], rounds: int, n: int) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=60)
    saved: list[Any] = []
    follow = asyncio.create_task(_collect(c, saved))
    try:
        await c.request("environment_open")
        await c.wait_for(
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 120
        )
        await one_round(c, saved, n)  # warm-up
        out = [await one_round(c, saved, n) for _ in range(rounds)]
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follow
        await c.close()
    return {
        "benchmark": "catalog",
        "rounds": rounds,
        "plans_per_round": n,
        **{k: round(statistics.median(r[k] for r in out), 1) for k in out[0]},
        "each_round": [{k: round(v, 1) for k, v in r.items()} for r in out],
    }


async def _collect(c: Client, saved: list[Any]) -> None:
    async for event in c.events(c.subjects.run_saved_event):
        saved.append(event)


def main() -> None:
    argv = sys.argv[1:]
    opts = {"--rounds": 3, "--plans": 50}
    for flag in opts:
        if flag in argv:
            i = argv.index(flag)
            opts[flag] = int(argv[i + 1])
            del argv[i : i + 2]
    with embedded_stack(*argv, timeout=240) as info:
        result = asyncio.run(run(info, opts["--rounds"], opts["--plans"]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
