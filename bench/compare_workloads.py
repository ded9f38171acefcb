"""The client side of `make bench-compare`: the same workloads against either server.

Run by bench/bench_compare.py in a process of its own, with the Python of the side it measures:
ours with .venv (`qserver.client.Client` over NATS), the reference with .venv-bench-ref
(bluesky-queueserver's own `ZMQCommSendAsync` over 0MQ). This module imports neither at the
top: the reference's venv has no `qserver`, ours may lack the reference's client. Prints one
JSON object of flat figures (the keys of bench/compare_table.py's rows).

    python -m bench.compare_workloads {ours|ref} PHASE CONNECTION_JSON  (PHASES: the keys below)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

USER = {"user": "bench", "user_group": "primary"}
# The item of bench/bench_core.py (a plan both servers' simulated profiles have).
ITEM = {
    "item_type": "plan",
    "name": "count",
    "args": [["det1", "det2"]],
    "kwargs": {"num": 10, "delay": 1},
}
COUNT = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 1}}
LONG = {
    "item_type": "plan",
    "name": "count",
    "args": [["det1"]],
    "kwargs": {"num": 400, "delay": 0.05},
}
Predicate = Callable[[dict[str, Any]], bool]


class Side:
    """What a workload needs of a server: a request, and a wait for a status condition."""

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def request_short(self, method: str, timeout: float) -> dict[str, Any] | None:
        """A request that may go unanswered (None) within `timeout` seconds."""
        raise NotImplementedError

    async def wait_for(self, predicate: Predicate, timeout: float) -> None:
        raise NotImplementedError

    async def follow_status(self) -> bool:
        """Answer `status` from the pushed status events from now on, if the client can."""
        return False

    async def unfollow_status(self) -> None:
        pass

    async def direct_status(self, on: bool) -> bool:
        """Let nats-server answer a plain `status` from its copy (ours, ADR 35), or not."""
        return False

    async def close(self) -> None:
        pass


class Ours(Side):
    """qserver's Python client; status conditions are awaited on the pushed status events."""

    def __init__(self, conn: dict[str, Any]) -> None:
        self.conn = conn

    async def open(self) -> Ours:
        from qserver.client import Client

        self.c = await Client.connect(self.conn["nats_url"], self.conn["prefix"], timeout=30)
        return self

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.c.request(method, params or {})

    async def request_short(self, method: str, timeout: float) -> dict[str, Any] | None:
        from qserver.client import NoAnswer

        # Asked of the queue service itself: `manager kill -> answering` waits for it, not
        # for nats-server's copy of its last status (ADR 35).
        direct = getattr(self.c, "direct_status", False)
        self.c.direct_status = False
        try:
            return await self.c.request(method, {}, timeout=timeout)
        except NoAnswer:
            return None
        finally:
            self.c.direct_status = direct

    async def wait_for(self, predicate: Predicate, timeout: float) -> None:
        await self.c.wait_for(predicate, timeout=timeout)

    async def follow_status(self) -> bool:
        if not hasattr(self.c, "follow_status"):  # a client before ADR 29
            return False
        await self.c.follow_status()
        return True

    async def unfollow_status(self) -> None:
        await self.c.unfollow_status()

    async def direct_status(self, on: bool) -> bool:
        if not hasattr(self.c, "direct_status"):  # a client before ADR 35
            return False
        self.c.direct_status = on
        return True

    async def close(self) -> None:
        await self.c.close()


class Reference(Side):
    """bluesky-queueserver's 0MQ client; it has no status events, so conditions are polled
    back to back (each poll is one status request, ~0.3 ms)."""

    def __init__(self, conn: dict[str, Any]) -> None:
        self.conn = conn

    async def open(self) -> Reference:
        from bluesky_queueserver.manager.comms import ZMQCommSendAsync

        self.z = ZMQCommSendAsync(
            zmq_server_address=self.conn["zmq_control_addr"], timeout_recv=30_000
        )
        return self

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply: dict[str, Any] = await self.z.send_message(method=method, params=params or {})
        return reply

    async def request_short(self, method: str, timeout: float) -> dict[str, Any] | None:
        from bluesky_queueserver.manager.comms import CommTimeoutError

        try:
            reply: dict[str, Any] = await self.z.send_message(
                method=method, params={}, timeout=int(timeout * 1e3)
            )
            return reply
        except CommTimeoutError:
            return None

    async def wait_for(self, predicate: Predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(await self.request("status")):
            if time.monotonic() > deadline:
                raise TimeoutError("the status condition was not met in time")

    async def close(self) -> None:
        self.z.close()


def _ok(reply: dict[str, Any], method: str) -> dict[str, Any]:
    if reply.get("success") is False:
        raise RuntimeError(f"{method} failed: {str(reply.get('msg'))[:300]}")
    return reply


async def timed(side: Side, method: str, params: dict[str, Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        reply = await side.request(method, params)
        out.append(time.perf_counter() - t)
        _ok(reply, method)
    return out


def p50(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


async def requests(side: Side, quick: bool) -> dict[str, Any]:
    """status, adds, queue_get, fill: the environment closed, the queue emptied after."""
    n_status, n_add, n_get, n_fill = (200, 100, 20, 2_000) if quick else (2_000, 1_000, 100, 10_000)
    await timed(side, "status", {}, 200)  # warm up
    status = await timed(side, "status", {}, n_status)
    # Asked of the queue service, where nats-server answered the plain status (ours since
    # ADR 35); the reference's figure is its plain status.
    asked: list[float] | None = status if isinstance(side, Reference) else None
    if await side.direct_status(False):
        await timed(side, "status", {}, 200)
        asked = await timed(side, "status", {}, n_status)
        await side.direct_status(True)
    # Answered from the last pushed status event where the client can follow them (ours
    # since ADR 29); the reference has no push: its figure is its plain status.
    pushed: list[float] | None = status if isinstance(side, Reference) else None
    if await side.follow_status():
        await timed(side, "status", {}, 200)
        pushed = await timed(side, "status", {}, n_status)
        await side.unfollow_status()
    _ok(await side.request("queue_clear"), "queue_clear")
    add = await timed(side, "queue_item_add", {"item": ITEM, **USER}, n_add)
    if not quick:  # queue_get of exactly 1,000 items
        assert (await side.request("status"))["items_in_queue"] == 1_000
    get = await timed(side, "queue_get", {}, n_get)
    _ok(await side.request("queue_clear"), "queue_clear")
    t = time.perf_counter()
    for start in range(0, n_fill, 500):
        items = [ITEM] * min(500, n_fill - start)
        _ok(await side.request("queue_item_add_batch", {"items": items, **USER}), "add_batch")
    fill = time.perf_counter() - t
    _ok(await side.request("queue_clear"), "queue_clear")
    return {
        "status_p50_ms": p50(status) * 1e3,
        "status_n": n_status,
        "status_pushed_p50_ms": None if pushed is None else p50(pushed) * 1e3,
        "status_asked_p50_ms": None if asked is None else p50(asked) * 1e3,
        "item_add_ops_per_s": n_add / sum(add),
        "item_add_p50_ms": p50(add) * 1e3,
        "item_add_n": n_add,
        "queue_get_1000_p50_ms": p50(get) * 1e3,
        "queue_get_items": n_add,
        "fill_10000_s": fill,
        "fill_items": n_fill,
    }


def direct_count_ms(n: int) -> float:
    """The same plan in a bare RunEngine in this process (this side's venv), per plan."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det1

    RE = RunEngine(context_managers=[])
    RE(count([det1], num=1))
    t = time.perf_counter()
    for _ in range(n):
        RE(count([det1], num=1))
    return (time.perf_counter() - t) / n * 1e3


async def timed_state(
    side: Side, method: str, params: dict[str, Any], predicate: Predicate
) -> float:
    t = time.perf_counter()
    _ok(await side.request(method, params), method)
    await side.wait_for(predicate, timeout=120)
    return time.perf_counter() - t


async def environment(side: Side, quick: bool) -> dict[str, Any]:
    """environment_open until the environment exists and the manager is idle."""
    return {
        "environment_open_s": await timed_state(
            side,
            "environment_open",
            {},
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle",
        )
    }


async def execution(side: Side, quick: bool) -> dict[str, Any]:
    """Turnover, pause and resume in the open environment; leaves it open and idle."""
    n_plans = 20 if quick else 100
    out: dict[str, Any] = {}
    _ok(await side.request("queue_clear"), "queue_clear")
    _ok(
        await side.request("queue_item_add_batch", {"items": [COUNT] * n_plans, **USER}),
        "add_batch",
    )
    t = time.perf_counter()
    _ok(await side.request("queue_start"), "queue_start")
    await side.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=900
    )
    total = time.perf_counter() - t
    direct = direct_count_ms(n_plans)
    out["turnover_100_s"] = total * 100 / n_plans
    out["turnover_plans"] = n_plans
    out["per_plan_ms"] = total / n_plans * 1e3
    out["direct_RE_per_plan_ms"] = direct
    out["overhead_per_plan_ms"] = total / n_plans * 1e3 - direct

    _ok(await side.request("queue_item_add", {"item": LONG, **USER}), "queue_item_add")
    _ok(await side.request("queue_start"), "queue_start")
    await side.wait_for(lambda st: st["re_state"] == "running", timeout=60)
    await asyncio.sleep(0.5)
    pause = await timed_state(
        side, "re_pause", {"option": "immediate"}, lambda st: st["manager_state"] == "paused"
    )
    resume = await timed_state(side, "re_resume", {}, lambda st: st["re_state"] == "running")
    out["pause_immediate_ms"] = pause * 1e3
    out["resume_ms"] = resume * 1e3
    await asyncio.sleep(0.2)
    _ok(await side.request("re_pause", {"option": "immediate"}), "re_pause")
    await side.wait_for(lambda st: st["manager_state"] == "paused", timeout=60)
    _ok(await side.request("re_stop"), "re_stop")
    await side.wait_for(lambda st: st["manager_state"] == "idle", timeout=60)
    _ok(await side.request("queue_clear"), "queue_clear")
    return out


async def kill(side: Side, quick: bool) -> dict[str, Any]:
    """manager_kill, then status until it is answered again (the supervisor restarts it)."""
    t = time.perf_counter()
    with contextlib.suppress(Exception):  # no reply is expected: the manager dies
        await side.request_short("manager_kill", timeout=0.5)
    deadline = time.monotonic() + 120
    while await side.request_short("status", timeout=0.2) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no status reply within 120 s of manager_kill")
    return {"manager_kill_s": time.perf_counter() - t}


async def zmq_status(side: Side, quick: bool) -> dict[str, Any]:
    """`status` over 0MQ with the reference's own client, on both sides (ours: through the
    0MQ bridge, which answers it from the pushed status, ADR 29): what the reference's users
    and their tools see."""
    n = 200 if quick else 2_000
    await timed(side, "status", {}, 200)  # warm up
    return {"status_zmq_p50_ms": p50(await timed(side, "status", {}, n)) * 1e3}


PHASES = {
    "requests": requests,
    "environment": environment,
    "execution": execution,
    "kill": kill,
    "zmq_status": zmq_status,
}
# Phases run with the reference's client whichever side is measured.
REFERENCE_CLIENT_PHASES = frozenset({"zmq_status"})


async def main(side_name: str, phase: str, conn: dict[str, Any]) -> dict[str, Any]:
    ref_client = side_name == "ref" or phase in REFERENCE_CLIENT_PHASES
    side = await (Reference(conn) if ref_client else Ours(conn)).open()
    try:
        return await PHASES[phase](side, bool(conn.get("quick")))
    finally:
        await side.close()


if __name__ == "__main__":
    figures = asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    print(json.dumps(figures))
