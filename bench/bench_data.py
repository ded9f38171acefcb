"""Data benchmark: what publishing documents costs a plan, and how soon a run is in the catalog.

1. 100 queued `count([det1])` plans through the embedded stack without Kafka nor catalog
   (no document stream either), with Kafka (documents into the document stream, exported
   to Kafka by the worker service), and with Kafka plus the catalog being written (the
   history service saving every run into Tiled from the stream), in alternating rounds; the
   cost of publishing is the difference per plan (it includes each item's result waiting
   for its documents to be stored, ADR 10).
2. The time from a run's stop document (its `time`) to the `run_saved` event, and to the
   run being read back over Tiled's HTTP API, for plans run one at a time.

Run: `.venv/bin/python -m bench.bench_data [--rounds N]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import httpx

from bench.bench_exec import direct_count_ms
from bench.common import embedded_stack
from qserver.client import Client

USER = {"user": "bench", "user_group": "primary"}
COUNT = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 1}}
MODES = {
    "no_kafka": ["--no-kafka", "--no-catalog"],
    "kafka": ["--no-catalog"],
    "kafka_and_catalog": [],
}
TARGET_ADDED_MS = 2.0


async def open_env(c: Client) -> None:
    await c.request("environment_open")
    await c.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=60
    )


async def queue_of_counts(c: Client, n: int = 100) -> float:
    """Milliseconds per plan for a queue of `n` counts, start to idle."""
    await c.request("queue_item_add_batch", {"items": [COUNT] * n, **USER})
    t = time.perf_counter()
    await c.request("queue_start")
    await c.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=300
    )
    return (time.perf_counter() - t) / n * 1e3


async def per_plan(args: list[str], repeats: int) -> list[float]:
    with embedded_stack(*args) as info:
        c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
        try:
            await open_env(c)
            await queue_of_counts(c, 20)  # warm up
            return [await queue_of_counts(c) for _ in range(repeats)]
        finally:
            await c.close()


async def stop_to_catalog(n: int) -> dict[str, Any]:
    with embedded_stack() as info:
        c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
        stops: dict[str, float] = {}
        saved: dict[str, float] = {}

        async def on_stop(msg: Any) -> None:
            doc = json.loads(msg.data)["doc"]
            stops[doc["run_start"]] = doc["time"]

        async def on_saved(msg: Any) -> None:
            saved[json.loads(msg.data)["run_uid"]] = time.time()

        await c.nc.subscribe(c.subjects.docs("stop"), cb=on_stop)
        await c.nc.subscribe(c.subjects.run_saved_event, cb=on_saved)
        headers = {"Authorization": f"Apikey {info['tiled_api_key']}"}
        base = f"{info['tiled_url']}/api/v1/metadata/{info['tiled_catalog']}"
        to_event: list[float] = []
        to_read: list[float] = []
        try:
            await open_env(c)
            async with httpx.AsyncClient(headers=headers) as http:
                done: set[str] = set()
                for _ in range(n):
                    r = await c.request("queue_item_execute", {"item": COUNT, **USER})
                    assert r["success"], r
                    deadline = time.monotonic() + 30
                    while not (new := (set(saved) & set(stops)) - done):
                        if time.monotonic() > deadline:
                            raise TimeoutError("no run_saved event within 30 s")
                        await asyncio.sleep(0.002)
                    uid = new.pop()
                    done.add(uid)
                    to_event.append(saved[uid] - stops[uid])
                    # Read it back as any client would: the run's metadata, with the stop.
                    resp = await http.get(f"{base}/{uid}")
                    resp.raise_for_status()
                    assert resp.json()["data"]["attributes"]["metadata"]["stop"]
                    to_read.append(time.time() - stops[uid])
        finally:
            await c.close()
    return {
        "runs": n,
        "stop_to_run_saved_event_ms": ms_summary(to_event),
        "stop_to_read_back_ms": ms_summary(to_read),
    }


def ms_summary(xs_s: list[float]) -> dict[str, float]:
    xs = sorted(x * 1e3 for x in xs_s)
    return {
        "p50": round(xs[len(xs) // 2], 1),
        "p95": round(xs[min(len(xs) - 1, int(len(xs) * 0.95))], 1),
        "max": round(xs[-1], 1),
    }


async def run(rounds: int, catalog_runs: int) -> dict[str, Any]:
    if rounds < 1:
        return {"catalog": await stop_to_catalog(catalog_runs)}
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):  # alternate, so that drifts of the machine hit every mode alike
        for mode, args in MODES.items():
            samples[mode] += await per_plan(args, repeats=2)
    median = {mode: statistics.median(xs) for mode, xs in samples.items()}
    return {
        "per_plan_ms": {
            mode: {"median": round(median[mode], 2), "samples": [round(x, 2) for x in xs]}
            for mode, xs in samples.items()
        },
        "direct_RE_per_plan_ms": round(direct_count_ms(), 2),
        "kafka_added_per_plan_ms": round(median["kafka"] - median["no_kafka"], 2),
        "kafka_and_catalog_added_per_plan_ms": round(
            median["kafka_and_catalog"] - median["no_kafka"], 2
        ),
        "target_added_ms": TARGET_ADDED_MS,
        "catalog": await stop_to_catalog(catalog_runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of every mode")
    p.add_argument("--catalog-runs", type=int, default=30, help="runs timed into the catalog")
    args = p.parse_args()
    figures = asyncio.run(run(args.rounds, args.catalog_runs))
    print(json.dumps({"benchmark": "data", **figures, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
