"""Where a `status` and a `queue_item_add` spend their time: client, NATS hop, service, encoding.

Starts the embedded stack (`--no-kafka --no-catalog`: the request path is the same as the
default stack's, with less noise beside it); this process is the client, with the project's
`Client` as a user of the stack. For each method it prints as JSON:

- the round trip (p50, mean) over N sequential requests;
- CPU time per request of each process (this client, nats-server, each service), from the
  kernel's counters over the same N requests: who works, and how much;
- the floors of the transport: the client to nats-server round trip (`flush`: PING/PONG) and
  a nats-py request to a bare echo responder in another process, with a reply of the same size;
- encoding: msgspec encoding the request body and decoding the reply, per call;
- a cProfile of the client over the requests, self time grouped by package;
- with py-spy (`--py-spy PATH`, or on PATH), a sampled profile of the queue service during
  the requests (active samples only), grouped by package.

Run: `.venv/bin/python -m bench.profile_requests [--n 2000] [--py-spy PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import psutil

from bench.common import embedded_stack
from qserver.client import Client
from services.stack.natsserver import NatsServer

USER = {"user": "bench", "user_group": "primary"}
ITEM = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 1}}

ECHO = """
import asyncio, sys
import nats
async def main():
    nc = await nats.connect(sys.argv[1])
    payload = b"x" * int(sys.argv[3])
    async def cb(msg):
        await msg.respond(payload)
    await nc.subscribe(sys.argv[2], cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

# Self time of the client's functions, grouped by where they live.
GROUPS = (
    ("waiting (epoll)", ("'poll' of 'select.epoll'", "select (selectors.py", "selectors.py:451")),
    ("socket send/recv", ("'send' of '_socket", "'recv' of '_socket", "sendall", "recv_into")),
    ("nats-py", ("nats/",)),
    ("asyncio/uvloop", ("asyncio/", "uvloop", "selectors.py")),
    ("msgspec", ("msgspec",)),
    ("qserver", ("qserver/",)),
    ("services", ("services/",)),
    ("json/logging", ("json/", "logging/")),
)


def group_of(where: str) -> str:
    for name, needles in GROUPS:
        if any(n in where for n in needles):
            return name
    return "other"


def p50(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
    return out


def processes(info: dict[str, Any]) -> dict[str, int]:
    pids = {"nats-server": info["nats_pid"], "supervisor": info["pid"], **info["services"]}
    for child in psutil.Process(info["services"]["worker"]).children(recursive=True):
        pids[f"environment {child.pid}"] = child.pid
    return pids


def client_profile(prof: cProfile.Profile, n: int) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    by_group: Counter[str] = Counter()
    top = []
    for (file, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{file}:{line}({func})"
        by_group[group_of(where)] += tt
        top.append((tt, ct, where))
    total = sum(by_group.values()) or 1.0
    top.sort(reverse=True)
    return {
        "self_us_per_request_by_group": {
            k: round(v / n * 1e6, 1) for k, v in by_group.most_common()
        },
        "share_by_group": {k: round(v / total, 3) for k, v in by_group.most_common()},
        "top_self_us_per_request": [
            {"where": w.split("site-packages/")[-1], "self_us": round(t / n * 1e6, 1)}
            for t, _c, w in top[:12]
        ],
    }


def stack_part(frames: list[str]) -> str:
    """Which part of the service a sampled stack is in: what runs above the event loop."""
    loop = [i for i, f in enumerate(frames) if f.startswith(("Runner.run ", "run (uvloop"))]
    if loop:
        frames = frames[loop[-1] + 1 :]
    if any("services/" in f for f in frames):
        return "the service's own code (handlers, status, events)"
    if any("nats/" in f for f in frames):
        return "nats-py (read loop, parser, flusher, micro)"
    if not frames:
        return "event loop itself (uvloop, syscalls)"
    return "asyncio (streams, futures, queues)"


def py_spy_summary(raw: Path) -> dict[str, Any]:
    """Collapsed stacks ('frame;frame;... count'), active samples only: shares by part."""
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        parts[stack_part(stack.split(";"))] += int(count)
    if not total:
        return {"samples": 0}
    return {
        "active_samples": total,
        "share_by_part": {k: round(v / total, 3) for k, v in parts.most_common()},
    }


async def timed(c: Client, method: str, params: dict[str, Any], n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await c.request(method, params)
        lat.append(time.perf_counter() - t)
    return lat


async def measure(
    c: Client,
    info: dict[str, Any],
    method: str,
    params: dict[str, Any],
    n: int,
    py_spy: str | None,
    keep: Path | None,
) -> dict[str, Any]:
    """Pass 1: round trips and each process's CPU per request. Pass 2 (n/2): the client under
    cProfile, the queue service under py-spy."""
    await timed(c, method, params, 100)  # warm up
    if method == "queue_item_add":
        await c.request("queue_clear")
    pids = processes(info)
    before, client_before = cpu_of(pids), time.process_time()
    t0 = time.perf_counter()
    lat = await timed(c, method, params, n)
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_before
    after = cpu_of(pids)
    cpu = {k: (after[k] - before[k]) / n * 1e6 for k in before if k in after}
    cpu = {k: round(v, 1) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.5}

    spy = None
    raw = Path(tempfile.mkstemp(prefix="qs-pyspy-", suffix=".txt")[1])
    if py_spy:
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(info["services"]["queue"]), "--rate", "500",
             "--format", "raw", "--nonblocking", "--output", str(raw), "--duration", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # py-spy attaches
    prof = cProfile.Profile()
    prof.enable()
    await timed(c, method, params, n // 2)
    prof.disable()
    spied: dict[str, Any] | None = None
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled
        spy.wait(60)
        spied = py_spy_summary(raw)
        if keep:
            shutil.copy(raw, keep / f"py-spy-queue-{method}.txt")
    raw.unlink(missing_ok=True)

    body = msgspec.json.encode(params)
    reply = await c.request_raw(method, body)
    t = time.perf_counter()
    for _ in range(1000):
        msgspec.json.encode(params)
    enc = (time.perf_counter() - t) / 1000
    t = time.perf_counter()
    for _ in range(1000):
        msgspec.json.decode(reply)
    dec = (time.perf_counter() - t) / 1000
    if method == "queue_item_add":
        await c.request("queue_clear")
    return {
        "n": n,
        "round_trip_p50_us": round(p50(lat) * 1e6, 1),
        "round_trip_mean_us": round(wall / n * 1e6, 1),
        "cpu_us_per_request": {"client (this process)": round(client_cpu / n * 1e6, 1), **cpu},
        "encode_request_us": round(enc * 1e6, 2),
        "decode_reply_us": round(dec * 1e6, 2),
        "reply_bytes": len(reply),
        "client_cprofile": client_profile(prof, n // 2),
        "queue_service_py_spy": spied,
    }


async def floors(reply_bytes: int, n: int) -> dict[str, Any]:
    """The transport alone, on a bare nats-server of its own: PING/PONG with the server, and a
    nats-py request to an echo responder in another process (the reply as big as status's)."""
    import nats

    with tempfile.TemporaryDirectory(prefix="qs-bench-echo-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, server.url, "echo", str(reply_bytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        nc = await nats.connect(server.url)
        try:
            line = await asyncio.to_thread(echo.stdout.readline)  # type: ignore[union-attr]
            if "ready" not in line:
                raise RuntimeError(f"the echo responder did not start: {echo.stderr.read()}")  # type: ignore[union-attr]
            ping, req = [], []
            for _ in range(200):
                await nc.request("echo", b"{}", timeout=5)
            for _ in range(n):
                t = time.perf_counter()
                await nc.flush()
                ping.append(time.perf_counter() - t)
            cpu = time.process_time()
            for _ in range(n):
                t = time.perf_counter()
                await nc.request("echo", b"{}", timeout=5)
                req.append(time.perf_counter() - t)
            cpu = time.process_time() - cpu
        finally:
            await nc.close()
            echo.terminate()
            echo.wait(10)
            server.stop()
    return {
        "client_nats_server_ping_p50_us": round(p50(ping) * 1e6, 1),
        "nats_py_echo_request_p50_us": round(p50(req) * 1e6, 1),
        "nats_py_echo_client_cpu_us_per_request": round(cpu / n * 1e6, 1),
        "echo_reply_bytes": reply_bytes,
    }


async def run(
    info: dict[str, Any], n: int, py_spy: str | None, keep: Path | None
) -> dict[str, Any]:
    c = await Client.connect(info["nats_url"], info["prefix"], timeout=30)
    try:
        status = await measure(c, info, "status", {}, n, py_spy, keep)
        add = await measure(c, info, "queue_item_add", {"item": ITEM, **USER}, n // 2, py_spy, keep)
        floor = await floors(status["reply_bytes"], n)
    finally:
        await c.close()
    return {"status": status, "queue_item_add": add, "transport": floor}


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_requests", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--n", type=int, default=2000, help="status requests (adds: half as many)")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable (optional)")
    p.add_argument("--keep", type=Path, help="keep py-spy's collapsed stacks in this folder")
    args = p.parse_args()
    with embedded_stack("--no-kafka", "--no-catalog") as info:
        result = asyncio.run(run(info, args.n, args.py_spy, args.keep))
    result["load_average"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
