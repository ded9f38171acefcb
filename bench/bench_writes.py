"""Where a `queue_item_add`'s time goes: its floors side by side; prints JSON.

Run: `.venv/bin/python -m bench.bench_writes` (its own nats-server and services; this
process is the client). Rounds of each alternate:

- `floor_request`: `nc.request` to a bare nats-py responder in another process (one hop
  there and back, as client → queue service);
- `floor_js_publish`: a JetStream publish acknowledged by nats-server (file storage), from
  this process (the queue service's append, alone);
- `item_add`: `queue_item_add` through `Client` (client → queue service → JetStream →
  queue service → client), sequential;
- `item_add_8`: eight clients adding at once (their sum rate).

The sequential rate's floor is about `1 / (floor_request + floor_js_publish)`.
`--profile service` records the queue service with py-spy while one client adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import msgspec
import nats
import psutil

from bench.bench_status import ECHO, _profile_service_with, _queue_pid, _times
from bench.common import stack, summary
from qserver.client import Client

USER = {"user": "bench", "user_group": "primary"}
ITEM = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 1}}


async def main(rounds: int, n: int, profile: str | None) -> dict[str, Any]:
    async with stack() as (server, prefix):
        c = await Client.connect(server.url, prefix)
        others = [await Client.connect(server.url, prefix) for _ in range(8)]
        body = msgspec.json.encode({"item": ITEM, **USER})
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, server.url, f"{prefix}.echo", "400"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout is not None
        echo.stdout.readline()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        stream = "BENCH_" + prefix.replace(".", "_")
        await js.add_stream(name=stream, subjects=[f"{prefix}.benchlog"])
        event = b"x" * 600

        async def add() -> None:
            reply = await c.request_raw("queue_item_add", body)
            if b'"success":false' in reply:
                raise RuntimeError(reply[:200])

        async def add_8() -> None:
            await asyncio.gather(*(o.request_raw("queue_item_add", body) for o in others))

        ways = {
            "floor_request": lambda: nc.request(f"{prefix}.echo", body, timeout=5),
            "floor_js_publish": lambda: js.publish(f"{prefix}.benchlog", event),
            "item_add": add,
        }
        lat: dict[str, list[float]] = {k: [] for k in ways}
        many: list[float] = []
        assert server.proc is not None
        procs = {
            "queue service": psutil.Process(_queue_pid(prefix)),
            "nats-server": psutil.Process(server.proc.pid),
            "client (this process)": psutil.Process(),
        }
        cpu = {k: 0.0 for k in procs}
        adds = 0
        try:
            for call in ways.values():
                await _times(call, 100)
            for _ in range(rounds):
                for k, call in ways.items():
                    before = {p: _cpu(pr) for p, pr in procs.items()}
                    lat[k] += await _times(call, n)
                    if k == "item_add":
                        adds += n
                        for p, pr in procs.items():
                            cpu[p] += _cpu(pr) - before[p]
                many += await _times(add_8, n // 8)
                await c.request("queue_clear")
            extra: dict[str, Any] = {}
            if profile == "service":
                extra["service_profile"] = await _profile_service_with(prefix, add, n * rounds)
        finally:
            echo.terminate()
            echo.wait(10)
            await nc.close()
            for o in [c, *others]:
                await o.close()
    s = {k: summary(v) for k, v in lat.items()}
    floor = s["floor_request"]["p50_ms"] + s["floor_js_publish"]["p50_ms"]
    return {
        "benchmark": "writes",
        "latency": s,
        "item_add_8_clients_ops_per_s": round(8 * len(many) / sum(many), 1),
        "floor_p50_ms (request + js publish)": round(floor, 3),
        "floor_ops_per_s": round(1e3 / floor, 1),
        "item_add_over_floor_p50_ms": round(s["item_add"]["p50_ms"] - floor, 3),
        "cpu_ms_per_item_add": {k: round(v / adds * 1e3, 3) for k, v in cpu.items()},
        **extra,
    }


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("-n", type=int, default=400)
    p.add_argument("--profile", choices=("service",))
    a = p.parse_args()
    t0 = time.perf_counter()
    try:
        import uvloop

        result = uvloop.run(main(a.rounds, a.n, a.profile))
    except ImportError:
        result = asyncio.run(main(a.rounds, a.n, a.profile))
    prof = result.pop("service_profile", None)
    print(json.dumps(result, indent=2))
    if prof:
        print(f"--- service_profile\n{prof}")
