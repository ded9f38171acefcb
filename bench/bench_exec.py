"""Execution benchmark: the workloads measured on the reference server; prints JSON.

Runs the real embedded stack (`python -m services.stack.embedded`) with the simulated beamline in a
temporary data dir; this process is the client. Run: `.venv/bin/python -m bench.bench_exec`
(documents also go to the stack's Kafka broker) or with `--no-kafka`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

import psutil

from bench.common import embedded_stack
from qserver.client import Client, NoAnswer

USER = {"user": "bench", "user_group": "primary"}
COUNT = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 1}}
REFERENCE = {
    "plans_per_s": 2.0,
    "overhead_per_plan_ms": 390,
    "environment_open_s": 1.42,
    "pause_immediate_seen_s": 0.75,
    "pause_deferred_seen_s": 1.3,
    "resume_s": 0.36,
    "manager_kill_to_answering_s": 5.06,
    "rss_all_processes_mib": 248,
}
TARGETS = {
    "overhead_per_plan_ms": 10,
    "pause_seen_ms": 50,
    "resume_seen_ms": 50,
    "environment_open_s": 1.0,
    "recovery_s": 2.0,
    "rss_core_mib": 250,
}


def direct_count_ms(n: int = 100) -> float:
    """The same plan run directly in a RunEngine in this process, per plan."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det1

    RE = RunEngine(context_managers=[])
    RE(count([det1], num=1))
    t = time.perf_counter()
    for _ in range(n):
        RE(count([det1], num=1))
    return (time.perf_counter() - t) / n * 1e3


async def timed_state(c: Client, action: Any, pred: Any) -> float:
    t = time.perf_counter()
    await action()
    await c.wait_for(pred, timeout=30)
    return time.perf_counter() - t


async def run(info: dict[str, Any]) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
    out: dict[str, Any] = {}
    out["environment_open_s"] = round(
        await timed_state(
            c,
            lambda: c.request("environment_open"),
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle",
        ),
        3,
    )

    await c.request("queue_item_add_batch", {"items": [COUNT] * 100, **USER})
    t = time.perf_counter()
    await c.request("queue_start")
    await c.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=120
    )
    total = time.perf_counter() - t
    direct = direct_count_ms()
    out["queue_100_count"] = {
        "seconds": round(total, 3),
        "plans_per_s": round(100 / total, 1),
        "per_plan_ms": round(total * 10, 2),
        "direct_RE_per_plan_ms": round(direct, 2),
        "overhead_per_plan_ms": round(total * 10 - direct, 2),
    }

    long = {
        "item_type": "plan",
        "name": "count",
        "args": [["det1"]],
        "kwargs": {"num": 400, "delay": 0.05},
    }
    for option in ("immediate", "deferred"):
        await c.request("queue_item_add", {"item": long, **USER})
        await c.request("queue_start")
        await c.wait_for(lambda st: st["re_state"] == "running", timeout=30)
        await asyncio.sleep(0.3)
        pause = await timed_state(
            c,
            lambda o=option: c.request("re_pause", {"option": o}),
            lambda st: st["manager_state"] == "paused",
        )
        resume = await timed_state(
            c, lambda: c.request("re_resume"), lambda st: st["re_state"] == "running"
        )
        out[f"pause_{option}_seen_ms"] = round(pause * 1e3, 1)
        out[f"resume_after_{option}_seen_ms"] = round(resume * 1e3, 1)
        await asyncio.sleep(0.1)
        await c.request("re_pause", {"option": "immediate"})
        await c.wait_for(lambda st: st["manager_state"] == "paused", timeout=30)
        await c.request("re_stop")
        await c.wait_for(lambda st: st["manager_state"] == "idle", timeout=30)

    out["rss_mib"] = rss(info)
    out["recovery_after_manager_kill_s"] = await recovery(c)
    await c.close()
    return out


def rss(info: dict[str, Any]) -> dict[str, float]:
    pids = {"nats-server": info["nats_pid"], **info["services"]}
    result = {}
    for name, pid in pids.items():
        p = psutil.Process(pid)
        result[name] = p.memory_info().rss / 2**20
        for child in p.children(recursive=True):
            result[f"{name}/environment"] = child.memory_info().rss / 2**20
    result = {k: round(v, 1) for k, v in result.items()}
    result["core_total"] = round(sum(result.values()), 1)
    return result


async def recovery(c: Client) -> float:
    t = time.perf_counter()
    with contextlib.suppress(NoAnswer):  # no reply is expected: the service dies
        await c.request("manager_kill", timeout=0.5)
    while True:
        try:
            await c.request("status", timeout=0.2)
            return round(time.perf_counter() - t, 3)
        except NoAnswer:
            await asyncio.sleep(0.01)


def main() -> None:
    args = ["--no-catalog", *(["--no-kafka"] if "--no-kafka" in sys.argv else [])]
    with embedded_stack(*args) as info:
        try:
            import uvloop

            figures = uvloop.run(run(info))
        except ImportError:
            figures = asyncio.run(run(info))
    print(
        json.dumps(
            {
                "benchmark": "execution",
                "kafka": "--no-kafka" not in sys.argv,
                **figures,
                "reference_0.0.25": REFERENCE,
                "targets": TARGETS,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
