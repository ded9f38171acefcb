"""The gateway at its edges: a hung service, odd requests, idle, slow and silent clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from services.stack.natsserver import NatsServer
from tests.conftest import Services, report, running_services
from tests.integration.gateway_support import Gateway, gateway_for

COUNT = {"item_type": "plan", "name": "count", "args": [["det1"]]}
# Bounds the gateways of these tests are started with, small to keep the tests short.
IDLE_S, REQUEST_S, PING_S = 1.0, 2.0, 1.0
# What a busy machine may add to a bound (scheduling, a process that starts slowly).
SLACK = 3.0


@pytest.fixture(scope="module")
async def gw(module_services: Services) -> AsyncIterator[Gateway]:
    args = ["--no-auth", "--idle-timeout", str(IDLE_S), "--request-timeout", str(REQUEST_S)]
    async with gateway_for(module_services, *args, "--ws-ping-interval", str(PING_S)) as g:
        yield g


def address(gw: Gateway) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").split(":")
    return host, int(port)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, what came)."""
    started, got = time.monotonic(), b""
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionResetError):  # an abort is a close too
            while chunk := await reader.read(65536):
                got += chunk
    return time.monotonic() - started, got


async def wait_log(gw: Gateway, text: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while text not in gw.proc.log_file.read_text(errors="replace"):
            await asyncio.sleep(0.05)


# ----- a hung service -----


@pytest.mark.timeout(180)
async def test_status_is_503_within_2_s_of_the_queue_service_hanging(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        running_services(nats_server, tmp_path) as svc,
        gateway_for(svc, "--no-auth", "--timeout", "4") as g,
        httpx.AsyncClient(base_url=g.url, timeout=30) as http,
    ):
        assert (await http.get("/api/status")).status_code == 200
        queue = svc.procs["queue"].proc
        assert queue is not None
        queue.send_signal(signal.SIGSTOP)
        hung = time.monotonic()
        try:
            while (r := await http.get("/api/status")).status_code == 200:
                assert time.monotonic() - hung < 15, "still 200 after 15 s"
                await asyncio.sleep(0.05)
            took = time.monotonic() - hung
            report(f"GET /api/status with the queue service hung: 503 after {took:.2f} s")
            assert r.status_code == 503 and "'status'" in r.json()["detail"], r.text
            # 1.5 s of a fresh event, then 0.5 s for the queue service to answer; the
            # gateway's --timeout (4 s) is not what bounds it.
            assert took < 3.5, took

            # Other routes are bounded by --timeout; the history service still answers.
            started = time.monotonic()
            r = await http.post("/api/queue/item/add", json={"item": COUNT})
            took = time.monotonic() - started
            report(f"POST /api/queue/item/add with the queue service hung: 503 after {took:.2f} s")
            assert r.status_code == 503 and "within 4 s" in r.json()["detail"], r.text
            assert took < 4 + SLACK
            assert (await http.get("/api/history/get")).status_code == 200
        finally:
            queue.send_signal(signal.SIGCONT)
        async with asyncio.timeout(20):
            while (await http.get("/api/status")).status_code != 200:
                await asyncio.sleep(0.1)


# ----- odd requests -----


async def test_a_nul_in_an_asset_path_is_a_logged_404(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as http:
        r = await http.get("/docs/assets/%00")
        assert r.status_code == 404 and "assets" in r.json()["detail"]
        assert (await http.get("/docs/assets/swagger-ui.css")).status_code == 200
    await wait_log(gw, "GET '/docs/assets/\\x00' from 127.0.0.1:")


def odd_paths(rng: random.Random) -> list[str]:
    segments = ["", ".", "..", "%2e%2e", "%2f", "%00", "%ff", "%c0%af", "~", ";", "*", "%"]
    paths = [
        "/docs/assets/" + "a" * 5000,
        "/" + "x" * 60_000,
        "//api//status",
        "/api/status/",
        "/docs/assets/../openapi.json",
        "/docs/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/queue/item/%00/add",
        "/api/%F0%9F%92%A9",
    ]
    for _ in range(150):
        base = rng.choice(["/", "/api/", "/docs/assets/", "/queue/plan/", "/api/queue/item/"])
        parts = [
            rng.choice(segments) + "".join(f"%{rng.randrange(256):02x}" for _ in range(3))
            for _ in range(rng.randrange(1, 4))
        ]
        paths.append(base + "/".join(parts))
    return paths


async def test_odd_paths_methods_and_headers_never_give_a_500(gw: Gateway) -> None:
    rng = random.Random(13)
    seen: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        for path in odd_paths(rng):
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
            r = await http.request(method, httpx.URL(gw.url).copy_with(raw_path=path.encode()))
            assert r.status_code < 500, (method, path[:100], r.status_code, r.text[:200])
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
        # Headers: huge, many, odd bytes.
        r = await http.get("/api/status", headers={"X-Big": "a" * 200_000})
        assert r.status_code == 431, r.text
        many = {f"X-{i}": "v" for i in range(3000)}
        assert (await http.get("/api/status", headers=many)).status_code in (200, 431)
        odd = {"Authorization": "ApiKey \x7f\x01", "Content-Type": "application/\x7fjson"}
        r = await http.post("/api/queue/item/add", headers=odd, content=b"{")
        assert r.status_code == 400, r.text
        # The gateway still serves.
        assert (await http.get("/api/status")).status_code == 200
    # Raw request lines that are not HTTP at all are refused by the parser.
    host, port = address(gw)
    for line in (
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(line)
        _, got = await closed_after(reader, 10)
        writer.close()
        assert got.startswith(b"HTTP/1.1 400"), got[:100]
    log = gw.proc.log_file.read_text(errors="replace")
    assert "Traceback" not in log and " 500 " not in log
    report(f"router fuzz: {sum(seen.values())} odd requests, statuses {sorted(seen.items())}")


# ----- slow, idle and silent clients -----


async def test_a_client_sending_its_head_byte_by_byte_is_cut_off(gw: Gateway) -> None:
    host, port = address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    head = b"GET /api/status HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: yes\r\n" * 200
    started = time.monotonic()

    async def dribble() -> None:
        for b in head:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(dribble())
    try:
        _, got = await closed_after(reader, REQUEST_S + 15)
        took = time.monotonic() - started
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
    report(
        f"slow head (a byte per 50 ms, --request-timeout {REQUEST_S:g}): cut off after {took:.2f} s"
    )
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert REQUEST_S - 0.1 < took < REQUEST_S + SLACK, took
    await wait_log(gw, "request not received within")


async def test_a_slow_body_is_cut_off_too(gw: Gateway) -> None:
    host, port = address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/queue/item/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    took, _ = await closed_after(reader, REQUEST_S + 15)
    writer.close()
    assert took < REQUEST_S + SLACK, took
    # The handler that waited for the body sees the client leave: a 4xx in the log, no 500.
    await wait_log(gw, "400 The client went away before its request was complete")
    assert "Traceback" not in gw.proc.log_file.read_text(errors="replace")


async def test_idle_connections_are_closed(gw: Gateway) -> None:
    host, port = address(gw)
    # Connected, never a byte.
    reader, writer = await asyncio.open_connection(host, port)
    silent, _ = await closed_after(reader, IDLE_S + 15)
    writer.close()
    # Kept alive after an answer.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    first = await reader.readuntil(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), first
    kept, _ = await closed_after(reader, IDLE_S + 15)
    writer.close()
    report(
        f"idle connections (--idle-timeout {IDLE_S:g}): closed after {silent:.2f} s (no "
        f"request), {time.monotonic() - started:.2f} s (after an answer)"
    )
    assert silent < IDLE_S + SLACK and kept < IDLE_S + SLACK


async def test_a_websocket_that_answers_no_ping_is_closed_and_one_that_does_stays(
    gw: Gateway,
) -> None:
    host, port = address(gw)
    ws = gw.url.replace("http://", "ws://")
    async with connect(ws + "/api/status/ws") as live:  # answers pings by itself
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /api/status/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        took, _ = await closed_after(reader, 2 * PING_S + 15)  # reads, never answers a ping
        writer.close()
        report(f"silent WebSocket (--ws-ping-interval {PING_S:g}): closed after {took:.2f} s")
        assert took < 2 * PING_S + SLACK
        # The one that answers its pings is still open and fed.
        async with asyncio.timeout(10):
            assert "status" in (await live.recv())


async def test_a_client_that_stops_reading_a_stream_is_dropped(
    gw: Gateway, module_services: Services
) -> None:
    host, port = address(gw)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /api/stream_console_output HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.5)  # the stream subscribed
    client = module_services.client
    assert client is not None
    line = {"time": 0.0, "msg": "x" * 60_000 + "\n"}
    # Far more than the kernel's buffers hold, while this client reads nothing.
    started = time.monotonic()
    async with asyncio.timeout(60):
        while "took nothing of its answer" not in gw.proc.log_file.read_text(errors="replace"):
            for _ in range(20):
                await client.nc.publish(client.subjects.console_event, json.dumps(line).encode())
            await client.nc.flush()
            await asyncio.sleep(0.05)
    took = time.monotonic() - started
    report(f"a stream nobody reads (--request-timeout {REQUEST_S:g}): dropped {took:.2f} s in")
    assert took < REQUEST_S + 10 + SLACK  # filling the buffers, then the bound
    await closed_after(reader, 30)  # what the buffers held, then the end
    writer.close()
