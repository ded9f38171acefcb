"""`make bench-compare`: ours against the reference, the same workloads, alternately, one run.

Ours is the default stack of `make run` (`python -m services.stack.embedded`: nats-server,
the services, the HTTP gateway, the 0MQ bridge, the Kafka broker and the Tiled catalog) in a
temporary data dir on free loopback ports. The reference is bluesky-queueserver 0.0.25
(`start-re-manager`, its simulated profile, console published on 0MQ) with Debian's
redis-server and bluesky-httpserver 0.0.14 (single-user API key), from the scratch venv
.venv-bench-ref (bench/reference-requirements.txt), also on free loopback ports.

Each round starts one side, measures, stops it, then the other side: ours, reference, ours,
reference... The client workloads run in a process of their own with the measured side's
Python (bench/compare_workloads.py); the HTTP workloads, memory and idle CPU are measured from
this process with the same code for both. Prints the JSON (also written to --json), then the
table (bench/compare_table.py): medians over rounds, ratio of medians (> 1: ours is better).

    .venv/bin/python -m bench.bench_compare [--rounds 2] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.bench_http import ITEM as HTTP_ITEM
from bench.bench_http import measure
from bench.common import embedded_stack
from bench.compare_table import compare, table
from services.stack.natsserver import free_port

ROOT = Path(__file__).resolve().parent.parent
REF_VENV = ROOT / ".venv-bench-ref"
REF_KEY = "BenchCompareKey1"
# Processes outside "core" (the queue server without HTTP, Kafka, catalog and the 0MQ bridge).
NOT_CORE = ("gateway", "zmq", "kafka", "catalog", "httpserver")


# ----- the systems under test -----


@contextlib.contextmanager
def ours_system() -> Iterator[dict[str, Any]]:
    """The default stack of `make run`; yields what the workloads and measurements need."""
    with embedded_stack(timeout=180) as info:
        yield {
            "side": "ours",
            "nats_url": info["nats_url"],
            "prefix": info["prefix"],
            "http_url": info["http_url"],
            "http_key": info["http_api_key"],
            "zmq_control_addr": info["zmq_control_addr"],
            "processes": lambda: ours_processes(info),
            "stack": {k: info[k] for k in ("services", "kafka_bootstrap", "tiled_url")},
        }


def ours_processes(info: dict[str, Any]) -> dict[int, str]:
    """pid -> role of every process of the stack (the supervisor and all its descendants)."""
    roles = {info["pid"]: "supervisor", info["nats_pid"]: "nats-server"}
    roles |= {pid: name for name, pid in info["services"].items()}
    if info.get("kafka_pid"):
        roles[info["kafka_pid"]] = "kafka broker"
    if info.get("tiled_pid"):
        roles[info["tiled_pid"]] = "catalog (tiled)"
    return _tree(info["pid"], roles)


def _tree(root: int, roles: dict[int, str]) -> dict[int, str]:
    """Every descendant of `root`, named after its nearest named ancestor ('x/child')."""
    out = {root: roles.get(root, "root")}
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for p in kids:
        if p.pid in roles:
            out[p.pid] = roles[p.pid]
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = p.ppid()
            name = p.name()
            owner = roles.get(parent) or out.get(parent, "?")
            out[p.pid] = "environment" if owner == "worker" else f"{owner}/{name}"
    return out


def _wait_http(url: str, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"ApiKey {key}"}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/api/status", headers=headers, timeout=2)
            if r.status_code == 200 and "manager_state" in r.json():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer /api/status within {timeout} s")


@contextlib.contextmanager
def reference_system(ref_venv: Path) -> Iterator[dict[str, Any]]:
    """redis-server, start-re-manager and bluesky-httpserver on free loopback ports."""
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="qs-bench-ref-") as tmp:
        ports = {k: free_port() for k in ("redis", "control", "info", "http")}
        control = f"tcp://127.0.0.1:{ports['control']}"
        info_addr = f"tcp://127.0.0.1:{ports['info']}"
        procs: dict[str, subprocess.Popen[bytes]] = {}

        def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
            with open(Path(tmp) / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(
                    argv,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )

        try:
            # redis-server with its compiled-in defaults (RDB snapshots), data in tmp.
            spawn(
                "redis", [redis, "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--dir", tmp]
            )
            bin_ = ref_venv / "bin"
            spawn(
                "re-manager",
                [
                    str(bin_ / "start-re-manager"),
                    "--zmq-control-addr", f"tcp://127.0.0.1:{ports['control']}",
                    "--zmq-info-addr", f"tcp://127.0.0.1:{ports['info']}",
                    "--zmq-publish-console", "ON",
                    "--redis-addr", f"127.0.0.1:{ports['redis']}",
                ],
            )  # fmt: skip
            spawn(
                "httpserver",
                [
                    str(bin_ / "start-bluesky-httpserver"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["http"]),
                ],
                env={
                    "QSERVER_ZMQ_CONTROL_ADDRESS": control,
                    "QSERVER_ZMQ_INFO_ADDRESS": info_addr,
                    "QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": REF_KEY,
                },
            )
            url = f"http://127.0.0.1:{ports['http']}"
            try:
                _wait_http(url, REF_KEY, 180)
            except RuntimeError:
                for name in procs:
                    print(
                        f"--- {name}.log\n{(Path(tmp) / f'{name}.log').read_text()[-3000:]}",
                        file=sys.stderr,
                    )
                raise

            def processes() -> dict[int, str]:
                # start-re-manager's watchdog starts the manager, then (environment_open) the
                # worker: its children in the order they were made.
                watchdog = procs["re-manager"].pid
                roles = {watchdog: "watchdog"}
                with contextlib.suppress(psutil.NoSuchProcess):
                    kids = psutil.Process(watchdog).children()
                    kids.sort(key=lambda p: p.create_time())
                    for role, kid in zip(("manager", "worker (environment)"), kids, strict=False):
                        roles[kid.pid] = role
                out: dict[int, str] = {}
                out |= _tree(watchdog, roles)
                out |= _tree(procs["redis"].pid, {procs["redis"].pid: "redis-server"})
                out |= _tree(procs["httpserver"].pid, {procs["httpserver"].pid: "httpserver"})
                return out

            yield {
                "side": "ref",
                "zmq_control_addr": control,
                "http_url": url,
                "http_key": REF_KEY,
                "processes": processes,
            }
        finally:
            for name in ("httpserver", "re-manager", "redis"):
                p = procs.get(name)
                if p is None or p.poll() is not None:
                    continue
                # start-re-manager's watchdog, manager and worker share its session.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 15)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, 9)
                    p.wait()


# ----- measurements made from here, the same for both -----


def workloads(python: Path, side: dict[str, Any], phase: str, quick: bool) -> dict[str, Any]:
    """One phase of bench/compare_workloads.py with the side's Python; its figures."""
    conn = {k: v for k, v in side.items() if isinstance(v, str | int | float)} | {"quick": quick}
    done = subprocess.run(
        [str(python), "-m", "bench.compare_workloads", side["side"], phase, json.dumps(conn)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side['side']} {phase} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


async def http_figures(side: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Requests/s over HTTP with 1 and 8 clients (httpx, as bluesky-queueserver-api uses);
    with 1 client also the CPU time per request of the side's processes together and of
    this process, the client: which of the two the one-client figure measures."""
    url, key = side["http_url"], side["http_key"]
    total = 200 if quick else 2_000
    out: dict[str, Any] = {}
    me = psutil.Process()

    async def measured(name: str, clients: int, method: str, path: str, body: Any) -> None:
        pids = side["processes"]()
        servers, client = _cpu(pids), me.cpu_times()
        r = await measure(url, key, method, path, body, clients, total)
        out[f"http_{name}_{clients}_req_s"] = r["req_per_s"]
        out[f"http_{name}_{clients}_p99_ms"] = r["p99_ms"]
        if clients == 1:
            after, n = _cpu(pids), r["n"] + 1  # and the warm-up request
            used = sum(after[p] - servers[p] for p in servers if p in after)
            now = me.cpu_times()
            spent = now.user + now.system - client.user - client.system
            out[f"http_{name}_1_server_cpu_us"] = round(used / n * 1e6, 1)
            out[f"http_{name}_1_client_cpu_us"] = round(spent / n * 1e6, 1)

    for clients in (1, 8):
        await measured("status", clients, "GET", "/api/status", {})
    for clients in (1, 8):
        await measured("add", clients, "POST", "/api/queue/item/add", {"item": HTTP_ITEM})
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"ApiKey {key}"}) as h:
            (await h.post("/api/queue/clear")).raise_for_status()
    return out


def _by_role(pids: dict[int, str], value: dict[int, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, v in value.items():
        out[pids[pid]] = out.get(pids[pid], 0.0) + v
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _core(role: str) -> bool:
    return not any(word in role for word in NOT_CORE)


def memory(side: dict[str, Any]) -> dict[str, Any]:
    pids = side["processes"]()
    rss: dict[int, float] = {}
    pss: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            full = psutil.Process(pid).memory_full_info()  # reads /proc/<pid>/smaps_rollup
            rss[pid] = full.rss / 2**20
            pss[pid] = full.pss / 2**20
    by_role = _by_role(pids, rss)
    pss_by_role = _by_role(pids, pss)
    return {
        "rss_all_mib": sum(by_role.values()),
        "rss_core_mib": sum(v for k, v in by_role.items() if _core(k)),
        "rss_by_process_mib": by_role,
        "pss_all_mib": sum(pss_by_role.values()),
        "pss_core_mib": sum(v for k, v in pss_by_role.items() if _core(k)),
        "pss_by_process_mib": pss_by_role,
    }


def _cpu(pids: dict[int, str]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def quiesce(side: dict[str, Any], at_least: float, limit: float = 0.25, most: float = 60) -> float:
    """Wait `at_least` seconds, then until the side's processes together use under `limit`
    of one CPU over 2 s (start-up imports, a catalog catching up), `most` seconds at most."""
    t0 = time.monotonic()
    time.sleep(at_least)
    while time.monotonic() - t0 < most:
        pids = side["processes"]()
        before, t = _cpu(pids), time.monotonic()
        time.sleep(2.0)
        after = _cpu(pids)
        used = sum(after[p] - before[p] for p in before if p in after) / (time.monotonic() - t)
        if used < limit:
            break
    return round(time.monotonic() - t0, 1)


def idle_cpu(side: dict[str, Any], window: float) -> dict[str, Any]:
    """CPU seconds per minute of every process of the side over `window` s of doing nothing
    (environment open, queue empty, no client connected but the HTTP server's own)."""
    pids = side["processes"]()
    before = _cpu(pids)
    t = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t
    after = _cpu(pids)
    per_min = {pid: (after[pid] - before[pid]) * 60 / elapsed for pid in before if pid in after}
    by_role = _by_role(pids, per_min)
    return {
        "idle_cpu_s_per_min": sum(by_role.values()),
        "idle_cpu_window_s": round(elapsed, 1),
        "idle_cpu_by_process_s_per_min": by_role,
    }


def measure_side(
    name: str, python: Path, ref_venv: Path, quick: bool, settle: float, window: float
) -> dict[str, Any]:
    """Start one side, run every workload on it in a fixed order, stop it."""
    system = ours_system() if name == "ours" else reference_system(ref_venv)
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    t0 = time.monotonic()
    with system as side:
        figures["started_s"] = round(time.monotonic() - t0, 1)
        figures["quiet_after_start_s"] = quiesce(side, settle)
        figures |= workloads(python, side, "requests", quick)
        # The reference's own 0MQ client on both sides (ours: the 0MQ bridge).
        figures |= workloads(ref_venv / "bin" / "python", side, "zmq_status", quick)
        figures |= asyncio.run(http_figures(side, quick))
        figures |= workloads(python, side, "environment", quick)
        # Idle with the environment open, before any plan ran: the catalog's writes of the
        # runs below would otherwise still be going on (they lag the runs by seconds).
        figures["quiet_before_idle_s"] = quiesce(side, settle)
        figures |= idle_cpu(side, window)
        figures |= workloads(python, side, "execution", quick)
        figures["quiet_before_memory_s"] = quiesce(side, settle)
        figures |= memory(side)
        after_runs = idle_cpu(side, window)
        figures["idle_after_runs_cpu_s_per_min"] = after_runs["idle_cpu_s_per_min"]
        figures["idle_after_runs_by_process_s_per_min"] = after_runs[
            "idle_cpu_by_process_s_per_min"
        ]
        figures |= workloads(python, side, "kill", quick)
    figures["load_after"] = os.getloadavg()
    return figures


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    ref_venv = Path(args.ref_venv)
    if not (ref_venv / "bin" / "start-re-manager").exists():
        raise SystemExit(f"no reference in {ref_venv}: run `make bench-compare` (it installs it)")
    started = datetime.datetime.now(datetime.UTC)
    rounds: dict[str, list[dict[str, Any]]] = {"ours": [], "ref": []}
    errors: list[str] = []
    for n in range(args.rounds):
        for name in ("ours", "ref"):
            python = Path(sys.executable) if name == "ours" else ref_venv / "bin" / "python"
            print(f"round {n + 1}/{args.rounds}: {name}...", file=sys.stderr, flush=True)
            try:
                figures = measure_side(
                    name, python, ref_venv, args.quick, args.settle, args.idle_window
                )
            except Exception as e:  # a failed round is reported, the others still count
                errors.append(f"round {n + 1} {name}: {type(e).__name__}: {e}")
                print(errors[-1], file=sys.stderr, flush=True)
                figures = {}
            rounds[name].append(_rounded(figures))
    entries = compare(rounds["ours"], rounds["ref"])
    return {
        "benchmark": "compare",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "ours_commit": _git_commit(),
        "reference": "bluesky-queueserver 0.0.25, bluesky-httpserver 0.0.14, redis-server (Debian)",
        "rows": _rounded(entries),
        "rounds": rounds,
        "errors": errors,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_compare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds of (ours, reference); default 2")
    p.add_argument(
        "--quick", action="store_true", help="few iterations, one round, 10 s idle: checks the tool"
    )
    p.add_argument("--json", help="also write the JSON to this file")
    p.add_argument(
        "--ref-venv", default=str(REF_VENV), help="venv of the reference (default .venv-bench-ref)"
    )
    p.add_argument(
        "--idle-window",
        type=float,
        default=None,
        help="seconds of idle CPU measured (60; quick 10)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds idle before the idle window (10; quick 3)",
    )
    args = p.parse_args()
    if args.quick and "--rounds" not in sys.argv:
        args.rounds = 1
    args.idle_window = args.idle_window or (10.0 if args.quick else 60.0)
    args.settle = args.settle if args.settle is not None else (2.0 if args.quick else 5.0)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    print()
    print(table(result["rows"]))
    if result["errors"]:
        print("\nerrors:\n" + "\n".join(result["errors"]))


if __name__ == "__main__":
    main()
