"""Idle cost: CPU seconds per idle minute of every process of the embedded stack; prints JSON.

Starts the default stack (`qserver stack up` as `make run` does: Kafka broker and Tiled
catalog included; pass `--no-kafka --no-catalog` etc. to measure another shape), opens the
environment, closes its own client, lets the stack settle, then reads each process's user +
system CPU time from /proc at the start and the end of the window. Run:
`.venv/bin/python -m bench.bench_idle [--seconds 60] [stack flags...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import embedded_stack
from qserver.client import Client

TICKS = os.sysconf("SC_CLK_TCK")
REFERENCE_CPU_S_PER_MIN = 0.9  # the reference (0MQ manager + worker + httpserver) at idle


def cpu_s(pid: int) -> float | None:
    """utime + stime of one process (its threads included), in seconds; None once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5)


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def name_of(pid: int, info: dict[str, Any]) -> str:
    known = {
        info.get("pid"): "supervisor",
        info.get("nats_pid"): "nats-server",
        info.get("kafka_pid"): "kafka (tansu)",
        info.get("tiled_pid"): "tiled",
        **{p: name for name, p in info["services"].items()},
    }
    if pid in known:
        return str(known[pid])
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    if "services.worker.env " in text + " ":
        return "environment"
    return text[:60]


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children(pid)
    return out


async def open_environment(info: dict[str, Any]) -> None:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
    try:
        await c.request("environment_open")
        await c.wait_for(
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle",
            timeout=120,
        )
    finally:
        await c.close()


def measure(info: dict[str, Any], seconds: float) -> dict[str, float]:
    pids = tree(info["pid"])
    before = {pid: cpu_s(pid) for pid in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    per_min: dict[str, float] = {}
    for pid in pids:
        a, b = before[pid], cpu_s(pid)
        if a is None or b is None:
            continue
        name = name_of(pid, info)
        while name in per_min:
            name += "'"
        per_min[name] = round((b - a) * 60 / elapsed, 3)
    return dict(sorted(per_min.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the idle window")
    p.add_argument("--settle", type=float, default=10.0, help="wait before the window")
    p.add_argument("--no-environment", action="store_true", help="leave the environment closed")
    args, stack_args = p.parse_known_args()
    with embedded_stack(*stack_args) as info:
        if not args.no_environment:
            asyncio.run(open_environment(info))
        time.sleep(args.settle)
        per_min = measure(info, args.seconds)
    total = round(sum(per_min.values()), 3)
    print(
        json.dumps(
            {
                "benchmark": "idle",
                "stack_args": stack_args,
                "environment_open": not args.no_environment,
                "window_s": args.seconds,
                "cpu_s_per_min_total": total,
                "cpu_s_per_min": per_min,
                "reference_cpu_s_per_min": REFERENCE_CPU_S_PER_MIN,
                "ratio_vs_reference": round(REFERENCE_CPU_S_PER_MIN / total, 2) if total else None,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
