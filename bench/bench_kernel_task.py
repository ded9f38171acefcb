"""How long a task in kernel mode keeps the manager busy after its code ends; prints JSON.

Run: `.venv/bin/python -m bench.bench_kernel_task` (the embedded stack with
`--use-ipython-kernel ON --no-kafka --no-catalog`, the environment open). Each round uploads a
script that does nothing (`pass`) and times, with a client that follows the status events,
from `script_upload`'s reply until the status shows the manager idle with the kernel given
back (`ip_kernel_captured` false): what a client waiting for the task sees. Then the same for
a `kernel_interrupt` of a sleeping script: from the interrupt's reply to idle, the reference
client's tests' 3 s window (`test_kernel_interrupt_01[...-script]`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.common import embedded_stack, summary
from qserver.client import Client


def idle_and_free(s: dict[str, Any]) -> bool:
    return (
        s["manager_state"] == "idle"
        and s.get("ip_kernel_state") == "idle"
        and not s.get("ip_kernel_captured")
    )


def finished(before: str) -> Any:
    """The status after a task: its result is news once the kernel is let go (the
    reference's order), the manager idle."""
    return lambda s: s["task_results_uid"] != before and idle_and_free(s)


async def run(info: dict[str, Any], n: int) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
    try:
        await c.follow_status()
        r = await c.request("environment_open")
        assert r["success"], r
        await c.wait_for(lambda s: s["worker_environment_exists"] and idle_and_free(s), 120)
        done: list[float] = []
        for _ in range(n):
            before = (await c.request("status"))["task_results_uid"]
            r = await c.request("script_upload", {"script": "pass\n"})
            assert r["success"], r
            t = time.perf_counter()
            await c.wait_for(finished(before), 60)
            done.append(time.perf_counter() - t)
        interrupted: list[float] = []
        for _ in range(max(n // 4, 3)):
            r = await c.request("script_upload", {"script": "import time\ntime.sleep(30)\n"})
            assert r["success"], r
            await c.wait_for(lambda s: s["manager_state"] == "executing_task", 60)
            before = (await c.request("status"))["task_results_uid"]
            r = await c.request("kernel_interrupt", {"interrupt_task": True})
            assert r["success"], r
            t = time.perf_counter()
            await c.wait_for(finished(before), 60)
            interrupted.append(time.perf_counter() - t)
        await c.request("environment_close")
        return {
            "benchmark": "kernel_task",
            "script_pass_to_idle": summary(done),
            "interrupt_to_idle": summary(interrupted),
        }
    finally:
        await c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20, help="scripts to run (a quarter as many interrupts)")
    a = p.parse_args()
    args = ("--no-kafka", "--no-catalog", "--no-zmq", "--use-ipython-kernel", "ON")
    with embedded_stack(*args) as info:
        print(json.dumps(asyncio.run(run(info, a.n)), indent=1))


if __name__ == "__main__":
    main()
