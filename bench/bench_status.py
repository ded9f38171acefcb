"""Where a `status` round trip's time goes, and what a followed status costs; prints JSON.

Run: `.venv/bin/python -m bench.bench_status` (starts its own nats-server and services;
this process is the client). Rounds of each way of asking alternate, so that the machine's
noise falls on all of them alike:

- `floor`: `nc.request` to a bare nats-py responder in another process that answers with
  bytes as long as the status (the transport: nats-py, nats-server, loopback, two hops);
- `nc_request`: `nc.request` to the queue service's `status` (the service's own share is
  this minus the floor);
- `client`: `Client.request_raw("status")` asked of the queue service
  (`direct_status=False`; the client's share is this minus `nc_request`);
- `client_request`: `Client.request("status")`, decoded to a dict;
- `nc_direct_get`: `nc.request` of the JetStream direct get of the last status event
  (nats-server answers, ADR 35);
- `client_direct`: `Client.request_raw("status")` as a client does by default: the direct
  get, its number checked (`direct_hits` counts those answered so);
- `followed`: the same call on a client that follows the status events (answered from the
  last pushed event when it is fresh and provably current, ADR 29).

`--profile client` adds a cProfile of the client's loop; `--profile service` records the
queue service with py-spy (if installed) while the client asks.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from bench.common import stack, summary
from qserver.client import Client

ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    body = b"x" * int(sys.argv[3])
    async def cb(msg):
        await msg.respond(body)
    await nc.subscribe(sys.argv[2], cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


async def _times(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
    return out


def _queue_pid(prefix: str) -> int | None:
    """The queue service of this run (found by its unique prefix), for py-spy."""
    found = subprocess.run(
        ["pgrep", "-f", f"services.queue .*--prefix {prefix}"], capture_output=True, text=True
    )
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


async def main(rounds: int, n: int, profile: str | None) -> dict[str, Any]:
    async with stack() as (server, prefix):
        c = await Client.connect(server.url, prefix, direct_status=False)
        direct = await Client.connect(server.url, prefix)  # nats-server's copy (ADR 35)
        followed = await Client.connect(server.url, prefix)
        await followed.follow_status()
        status_bytes = await c.request_raw("status", b"{}")
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, server.url, f"{prefix}.echo", str(len(status_bytes))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout is not None
        echo.stdout.readline()
        nc = await nats.connect(server.url)
        subject = c.subjects.api("status")
        ways: dict[str, Callable[[], Awaitable[Any]]] = {
            "floor": lambda: nc.request(f"{prefix}.echo", b"{}", timeout=5),
            "nc_request": lambda: nc.request(subject, b"{}", timeout=5),
            "client": lambda: c.request_raw("status", b"{}"),
            "client_request": lambda: c.request("status"),
            "nc_direct_get": lambda: nc.request(c.subjects.status_direct_get, b"", timeout=5),
            "client_direct": lambda: direct.request_raw("status", b"{}"),
            "followed": lambda: followed.request_raw("status", b"{}"),
        }
        lat: dict[str, list[float]] = {k: [] for k in ways}
        try:
            for call in ways.values():  # warm up
                await _times(call, 200)
            for _ in range(rounds):
                for k, call in ways.items():
                    lat[k] += await _times(call, n)
            extra: dict[str, Any] = {}
            if profile == "client":
                extra["client_profile"] = await _profile_client(c, n * rounds)
            elif profile == "service":
                extra["service_profile"] = await _profile_service(c, prefix, n * rounds)
        finally:
            echo.terminate()
            echo.wait(10)
            await nc.close()
            await c.close()
            await direct.close()
            await followed.close()
    s = {k: summary(v) for k, v in lat.items()}
    p50 = {k: v["p50_ms"] for k, v in s.items()}
    return {
        "benchmark": "status",
        "status_reply_bytes": len(status_bytes),
        "latency": s,
        "shares_p50_ms": {
            "transport (floor)": p50["floor"],
            "queue service (nc_request - floor)": round(p50["nc_request"] - p50["floor"], 3),
            "client (client - nc_request)": round(p50["client"] - p50["nc_request"], 3),
            "decoding (client_request - client)": round(p50["client_request"] - p50["client"], 3),
        },
        "direct_hits": direct.direct_hits,
        "direct_over_client_p50": round(p50["client"] / p50["client_direct"], 2),
        # A followed status takes microseconds: its p50 can round to 0.000 ms.
        "followed_over_client_p50": (
            round(p50["client"] / p50["followed"], 1) if p50["followed"] else None
        ),
        **extra,
    }


async def _profile_client(c: Client, n: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        await c.request_raw("status", b"{}")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


async def _profile_service(c: Client, prefix: str, n: int) -> str:
    return await _profile_service_with(prefix, lambda: c.request_raw("status", b"{}"), n)


async def _profile_service_with(prefix: str, call: Callable[[], Awaitable[Any]], n: int) -> str:
    """py-spy samples of the queue service while `call` runs `n` times, summarized."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pid = _queue_pid(prefix)
    if pid is None or not Path(spy).exists():
        return "py-spy or the queue service's pid not found"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "queue.txt"
        argv = [spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw"]
        rec = subprocess.Popen(
            [*argv, "--nonblocking", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)
        for _ in range(n):
            await call()
        rec.send_signal(2)
        rec.wait(30)
        return _fold(out.read_text()) if out.exists() else "py-spy wrote nothing"


# The event loop waiting for I/O (uvloop's run_forever is C: py-spy shows its caller).
IDLE_LEAVES = ("Runner.run ", "run_until_complete ", "BaseEventLoop.run_forever ")


def _fold(raw: str, top: int = 22) -> str:
    """py-spy's folded stacks → busy share, then the functions holding most of it.

    `self`: samples where the function is the innermost frame; `incl`: where it is
    anywhere on the stack (counted once per sample). Shares are of the busy samples.
    """
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    busy = idle = 0
    for line in raw.splitlines():
        stack_, _, count = line.rpartition(" ")
        if not stack_:
            continue
        k = int(count)
        frames = [f.split(" (")[0] for f in stack_.split(";")]
        leaf = stack_.split(";")[-1]
        if leaf.startswith(IDLE_LEAVES):
            idle += k
            continue
        busy += k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    if not busy:
        return "no busy samples"
    lines = [f"busy {100 * busy / (busy + idle):.1f}% of {busy + idle} samples"]
    lines.append("self:")
    for name, k in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * k / busy:5.1f}%  {name}")
    lines.append("inclusive (frames on nearly every stack left out):")
    rows = [(n, k) for n, k in incl.items() if k < 0.9 * busy]
    for name, k in sorted(rows, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * k / busy:5.1f}%  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("-n", type=int, default=500, help="requests per way per round")
    p.add_argument("--profile", choices=("client", "service"))
    a = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main(a.rounds, a.n, a.profile))
    except ImportError:
        result = asyncio.run(main(a.rounds, a.n, a.profile))
    profiles = {k: result.pop(k) for k in ("client_profile", "service_profile") if k in result}
    print(json.dumps(result, indent=2))
    for k, v in profiles.items():
        print(f"--- {k}\n{v}")
