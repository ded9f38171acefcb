"""The console: the reference's lines, kept in JetStream, the same for every reader (ADR 18)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from qserver.client import Client
from qserver.protocol import console
from services.stack.natsserver import NatsServer
from tests.conftest import Services, running_services
from tests.integration.gateway_support import gateway_for
from tests.integration.test_cli import argv
from tests.integration.test_execution import add, idle, open_env, until

Msgs = list[dict[str, Any]]

# What the reference's RE Manager and worker print for one session, in order.
SESSION_LINES = [
    "Opening the new RE environment ...",
    "Waiting for RE worker to start ...",
    "Startup code was successfully loaded.",
    "Instantiating and configuring Run Engine ...",
    "RE Environment is ready",
    "Worker started successfully.",
    "Adding new item to the queue ...",
    "Item added: success=True item_type='plan' name='count' item_uid=",
    "Starting queue processing ...",
    "Processing the next queue item: 1 plans are left in the queue.",
    "Starting the plan:\n{'name': 'count',",
    "Starting a plan 'count'.",
    "The plan was exited. Plan state: completed",
    "No items are left in the queue.",
    "Queue is empty.",
    "Closing existing RE environment ...",
    "Closing RE Worker environment ...",
    "Run Engine environment was closed successfully",
]
# Said by another process at about the same time as the lines around it.
UNORDERED_LINES = ["Waiting for exit confirmation from RE worker ..."]
# The reference's log line: `[I 2024-05-01 12:00:00,123 logger.name] message`.
LOG_LINE = r"^\[I \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [\w.]+\] "


async def kept(client: Client, last_msg_uid: str = "ALL") -> dict[str, Any]:
    params = {"last_msg_uid": last_msg_uid, "with_uids": True}
    return await client.request("console_output_update", params)


async def wait_kept(client: Client, done: Callable[[str], bool], timeout: float = 60) -> Msgs:
    """The backlog once its text satisfies `done` (polled: the test's own reading)."""
    async with asyncio.timeout(timeout):
        while True:
            msgs: Msgs = (await kept(client))["console_output_msgs"]
            if done("".join(m["msg"] for m in msgs)):
                return msgs
            await asyncio.sleep(0.2)


def said(msgs: Msgs) -> list[str]:
    """The messages a test published itself (the services' log lines start with "[")."""
    return [m["msg"] for m in msgs if not m["msg"].startswith("[")]


async def say(client: Client, *texts: str) -> None:
    """Publish console messages as a service does (with their uids), and wait for the server."""
    for text in texts:
        data, headers = console.encode(text)
        await client.nc.publish(client.subjects.console_event, data, headers=headers)
    await client.nc.flush()


def in_order(text: str, lines: list[str]) -> None:
    at = [text.find(line) for line in lines]
    assert -1 not in at, [line for line, i in zip(lines, at, strict=True) if i < 0]
    assert at == sorted(at), text


async def get(http: httpx.AsyncClient, path: str, **body: Any) -> dict[str, Any]:
    r = await http.request("GET", path, json=body or None)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    assert reply["success"], reply
    return reply


async def test_a_session_prints_the_reference_lines_and_a_later_gateway_shows_them(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    async with gateway_for(services, "--no-auth") as first:
        await open_env(client)
        await add(client, {"item_type": "plan", "name": "count", "args": [["det1"]]})
        assert (await client.request("queue_start"))["success"]
        await until(client, lambda st: st["items_in_history"] == 1 and idle(st))
        assert (await client.request("environment_close"))["success"]
        await until(client, lambda st: not st["worker_environment_exists"] and idle(st))
        msgs = await wait_kept(client, lambda t: SESSION_LINES[-1] in t)
        text = "".join(m["msg"] for m in msgs)
        in_order(text, SESSION_LINES)
        assert all(line in text for line in UNORDERED_LINES), text
        assert re.search(LOG_LINE + "RE Environment is ready$", text, re.M), text

        # A gateway started after all this has it, with the same uids as the first one.
        async with (
            gateway_for(services, "--no-auth") as later,
            httpx.AsyncClient(base_url=first.url, timeout=30) as http1,
            httpx.AsyncClient(base_url=later.url, timeout=30) as http2,
        ):
            text2 = (await get(http2, "/api/console_output", nlines=1000))["text"]
            in_order(text2, [line.split("\n")[0] for line in SESSION_LINES])
            # Both answer the same (asked while nothing new is printed: the uid says so).
            for _ in range(20):
                uid1 = (await get(http1, "/api/console_output/uid"))["console_output_uid"]
                all1 = await get(http1, "/api/console_output_update", last_msg_uid="ALL")
                all2 = await get(http2, "/api/console_output_update", last_msg_uid="ALL")
                texts = [
                    (await get(h, "/api/console_output", nlines=1000))["text"]
                    for h in (http1, http2)
                ]
                uid2 = (await get(http2, "/api/console_output/uid"))["console_output_uid"]
                if uid1 == uid2:
                    break
            assert uid1 == uid2 and all1 == all2 and texts[0] == texts[1]
            assert set(all2["console_output_msgs"][0]) == {"time", "msg"}  # the reference's

            # A web page's socket gets the recent output first, then what comes, once each.
            ws_url = later.url.replace("http://", "ws://") + "/api/console_output/ws?backlog=2000"
            async with connect(ws_url) as ws:
                seen = [json.loads(await asyncio.wait_for(ws.recv(), 30))["msg"]]
                while SESSION_LINES[-1] not in seen[-1]:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["msg"])
                await say(client, "printed after the page opened\n")
                while seen[-1] != "printed after the page opened\n":
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["msg"])
            assert "".join(seen).count("RE Environment is ready") == text.count(
                "RE Environment is ready"
            )
            assert uid1 != (await get(http2, "/api/console_output/uid"))["console_output_uid"]


async def test_polling_goes_on_across_a_gateway_and_a_history_service_restart(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    async with gateway_for(services, "--no-auth") as gw, httpx.AsyncClient(timeout=30) as http:
        await say(client, "before 1\n", "before 2\n")
        await wait_kept(client, lambda t: "before 2" in t)
        last = (await get(http, gw.url + "/api/console_output_update", last_msg_uid=""))[
            "last_msg_uid"
        ]
    # The gateway is gone; the console goes on.
    await say(client, "during 1\n", "during 2\n")
    await wait_kept(client, lambda t: "during 2" in t)
    async with gateway_for(services, "--no-auth") as gw, httpx.AsyncClient(timeout=30) as http:
        r = await get(http, gw.url + "/api/console_output_update", last_msg_uid=last)
        assert said(r["console_output_msgs"]) == ["during 1\n", "during 2\n"]
        last = r["last_msg_uid"]
        await say(client, "after\n")
        await wait_kept(client, lambda t: "after" in t)

        services.procs["history"].stop()
        services.start("history")
        await services.wait_ready()
        r = await get(http, gw.url + "/api/console_output_update", last_msg_uid=last)
        assert said(r["console_output_msgs"]) == ["after\n"]
        text = (await get(http, gw.url + "/api/console_output", nlines=1000))["text"]
        assert [line for line in text.split("\n") if not line.startswith("[")][-3:] == [
            "during 1",
            "during 2",
            "after",
        ]


async def test_the_console_stream_keeps_only_the_newest_within_its_bounds(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    limits = {"QSERVER_CONSOLE_MAX_MSGS": "50", "QSERVER_CONSOLE_MAX_MIB": "0.05"}
    async with running_services(nats_server, tmp_path, env=limits) as services:
        client = services.client
        assert client is not None
        js = client.nc.jetstream()
        stream = client.subjects.console_stream
        await say(client, *(f"line {i}\n" for i in range(200)))
        await wait_kept(client, lambda t: "line 199" in t)
        info = await js.stream_info(stream)
        assert info.state.messages <= 50 and info.state.last_seq >= 200
        # A history service that starts now has only what the stream kept.
        services.procs["history"].stop()
        services.start("history")
        await services.wait_ready()
        msgs = (await kept(client))["console_output_msgs"]
        assert said(msgs)[-3:] == ["line 197\n", "line 198\n", "line 199\n"]
        assert len(said(msgs)) <= 50 and "line 100\n" not in said(msgs)

        big = "x" * 2000 + "\n"
        await say(client, *[big] * 100, "after the big ones\n")
        await wait_kept(client, lambda t: "after the big ones" in t)
        info = await js.stream_info(stream)
        assert info.state.bytes <= 0.05 * 2**20 and info.state.messages < 50


async def test_the_stream_is_followed_only_while_someone_reads_the_console(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """No one reads the console: the history service has no consumer on its stream (the
    lines of each request cost it nothing). A read catches up with what came meanwhile,
    then follows; a while after the last read it stops again, and the next read still
    gives every line, as if it had followed all along."""
    async with running_services(
        nats_server, tmp_path, env={"QSERVER_CONSOLE_FOLLOW_S": "2"}
    ) as services:
        client = services.client
        assert client is not None
        js = client.nc.jetstream()
        stream = client.subjects.console_stream

        async def consumers() -> int:
            return len(await js.consumers_info(stream))

        await say(client, *(f"before {i}\n" for i in range(20)))
        await _stored(js, stream, "before 19")
        assert await consumers() == 0  # loaded at start, not followed
        first = await kept(client)
        assert said(first["console_output_msgs"])[-20:] == [f"before {i}\n" for i in range(20)]
        # Followed while read (the follower makes its consumer on a task of its own).
        deadline = time.monotonic() + 60
        while await consumers() != 1:
            assert time.monotonic() < deadline, "the console stream is not followed"
            await asyncio.sleep(0.1)
        await say(client, "while followed\n")
        await wait_kept(client, lambda t: "while followed" in t)
        # No read for 2 s: the consumer goes (the wait reads nothing).
        deadline = time.monotonic() + 60
        while await consumers():
            assert time.monotonic() < deadline, "the console stream is still followed"
            await asyncio.sleep(0.2)
        await say(client, *(f"after {i}\n" for i in range(20)))
        await _stored(js, stream, "after 19")
        update = await kept(client, first["last_msg_uid"])
        assert said(update["console_output_msgs"]) == [
            "while followed\n",
            *(f"after {i}\n" for i in range(20)),
        ]
        text = (await client.request("console_output", {"nlines": 200}))["text"]
        ours = [line for line in text.splitlines() if line and not line.startswith("[")]
        assert ours[-21:] == ["while followed", *(f"after {i}" for i in range(20))]


async def test_a_read_holds_what_the_stream_held_when_asked_though_the_follower_lags(
    services: Services,
) -> None:
    """The history service's follower is behind the stream (here: the service was stopped
    while a burst came, and has the burst's first pull and the read to take at once when it
    goes on). A read asked once the stream holds the burst's last line must still give it
    (the follower is waited for), as a client that saw a plan end expects its last lines."""
    client = services.client
    js = client.nc.jetstream()
    stream = client.subjects.console_stream
    history = services.procs["history"].proc
    assert history is not None
    await kept(client)  # followed from now on
    deadline = time.monotonic() + 60
    while len(await js.consumers_info(stream)) != 1:
        assert time.monotonic() < deadline, "the console stream is not followed"
        await asyncio.sleep(0.1)
    for rounds in range(2):  # each round's burst is new to the follower
        last = f"burst {rounds} line 4999"
        history.send_signal(signal.SIGSTOP)
        try:
            await say(client, *(f"burst {rounds} line {i}\n" for i in range(5000)))
            await _stored(js, stream, last)
            read = asyncio.ensure_future(kept(client))
            await asyncio.sleep(0)  # the request is sent ...
            await client.nc.flush()  # ... and nats-server has it for the stopped service
        finally:
            history.send_signal(signal.SIGCONT)
        msgs = (await read)["console_output_msgs"]
        assert said(msgs)[-1] == last + "\n", said(msgs)[-3:]


async def _stored(js: Any, stream: str, text: str, timeout: float = 60) -> None:
    """Wait until the stream's last message holds `text`."""
    async with asyncio.timeout(timeout):
        while True:
            info = await js.stream_info(stream)
            msg = await js.get_msg(stream, info.state.last_seq)
            if text in console.decode(msg.data).msg:
                return
            await asyncio.sleep(0.1)


async def test_the_cli_monitor_prints_the_recent_output_then_what_comes(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    await say(client, "printed before the monitor started\n")
    await wait_kept(client, lambda t: "before the monitor" in t)
    proc = await asyncio.create_subprocess_exec(
        *argv(services, "monitor", "console", "--backlog", "20"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "printed before the monitor started" not in "".join(out):
                out.append((await proc.stdout.readline()).decode())
            # What comes now: a progress bar's redraws reach the terminal as written.
            await say(client, "after \x1b[A\r\n", "printed after it started\n")
            while "printed after it started" not in out[-1]:
                out.append((await proc.stdout.readline()).decode())
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 60)
    assert rc == 0
    assert "".join(out).count("printed before the monitor started") == 1
    assert "after \x1b[A\r\n" in "".join(out)

    once = await asyncio.create_subprocess_exec(
        *argv(services, "monitor", "console", "--once", "--backlog", "1"),
        stdout=asyncio.subprocess.PIPE,
    )
    printed, _ = await asyncio.wait_for(once.communicate(), 60)
    assert printed.decode() == "printed after it started\n"


@pytest.mark.timeout(240)
async def test_progress_bars_reach_the_reference_client_as_it_draws_them(
    services: Services,
) -> None:
    async with (
        gateway_for(services, "--no-auth") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
    ):
        seen = await asyncio.to_thread(reference_client_session, gw.url)
        shown = (await get(http, "/api/console_output", nlines=1000))["text"]
    for text in (seen, shown):
        assert "RE Environment is ready" in text
        # As the reference client's own test (test_console_monitor_06) checks it.
        start, stop = "TESTING 3 PROGRESS BARS", "TEST COMPLETED"
        assert text.count(start) == 1 and text.count(stop) == 1, text
        bars = re.search(start + "(.|\n)+" + stop, text)
        assert bars, text
        for n in (1, 2, 3):
            assert bars[0].count(f"TEST{n}") == 1, bars[0]


def reference_client_session(url: str) -> str:
    """bluesky-queueserver-api's HTTP client, unchanged: a plan with progress bars, watched
    with its console monitor; the monitor's text once the environment is closed."""
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.http import REManagerAPI

    # A generous request timeout: opening the environment on a busy machine takes seconds.
    RM = REManagerAPI(http_server_uri=url, timeout=60)
    try:
        RM.console_monitor.enable()
        RM.environment_open()
        RM.wait_for_idle(timeout=60)
        RM.item_add(BPlan("plan_test_progress_bars", 3))
        RM.queue_start()
        RM.wait_for_idle(timeout=120)
        RM.environment_close()
        RM.wait_for_idle(timeout=60)
        # The monitor polls twice a second: wait for the last line to reach it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text: str = RM.console_monitor.text()
            if "Run Engine environment was closed successfully" in text:
                break
            time.sleep(0.25)
        text = RM.console_monitor.text()
        # As the reference client's test_console_monitor_07: enough lines for 3.
        RM.console_monitor.text_max_lines = 3
        assert len(RM.console_monitor.text().split("\n")) == 3
        return text
    finally:
        RM.console_monitor.disable()
        RM.close()
